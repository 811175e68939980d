"""Layer 1b, real inputs (imports ``core``, ``sim``): reading sequence files (``realdata``),
preparing them exactly as the simulator prepares its own (``preprocess``: seeing cut, zero
point, start, stacks), and the plausibility rules for one epoch (``plausibility``: numpy only,
shared with the standalone exported loader)."""
