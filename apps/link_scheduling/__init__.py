"""App C: MWIS link scheduling with a GCNN actor and the local greedy solver (docs/design.md, section 9)."""
