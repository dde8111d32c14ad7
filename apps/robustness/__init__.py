"""The robustness sweep: training quality of the distributed optimizers under packet loss (docs/design.md, sec. 12)."""
