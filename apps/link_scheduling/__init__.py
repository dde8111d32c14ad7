"""App C: MWIS link scheduling with a GCNN actor and the local greedy solver (DESIGN section 9)."""
