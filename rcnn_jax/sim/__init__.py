"""Layer 1, the simulator (imports ``core``): Table 1 and the survey (``survey``, ``cadence``,
``bands``), Table 2 and Fig. 1 (``lightcurves``), Sec. 2.3 (``render``: eq. 1, PSF, hosts, noise),
Sec. 3.1 (``sequences``: first detection, windows, eq. 4, stacks), ``photometry`` (optimal
photometry of Sec. 3.3), and ``simulator``, which composes them: (key, simulator) -> batch."""
