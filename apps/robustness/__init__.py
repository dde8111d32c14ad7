"""The robustness sweep: training quality of the distributed optimizers against packet loss (docs/design.md, 12)."""
