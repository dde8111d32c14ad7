"""App B: UWMMSE power allocation and its WMMSE baselines (DESIGN section 8)."""
