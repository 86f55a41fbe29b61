"""Pure analysis of measured records: roofline floor, regimes, scaling, routing."""
