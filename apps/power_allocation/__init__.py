"""App B: UWMMSE power allocation and its WMMSE baselines (docs/design.md, section 8)."""
