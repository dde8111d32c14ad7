"""What the three apps share: their common flags (:mod:`.cli`), their main wrapper (:mod:`.main`) and plots
(:mod:`.plots`)."""
