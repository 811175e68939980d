"""The simulator's priors (``config.sim``), shared by every survey, with their sources.

Calibrated on HiTS 2015 (DECam g): the PSF relation, the per-epoch and night-to-night
calibration errors and the registration error were measured on the 40 real non-variable HiTS
development stars; the class models (light-curve shapes, hosts, magnitude prior) come from the
papers and catalogues cited beside each value. ``configs/lsst.py`` and ``configs/ztf.py`` start
from these and change the PSF, colours, calibration and magnitude ranges
(``configs.common.surveys.adapt_sim`` and their own ``get_config``).
"""

import ml_collections

CLASS_NAMES = ('Supernova', 'RRLyrae', 'Cepheid', 'EclipsingBinary', 'NonVariable', 'Galaxy',
               'Asteroid')


def sim_block():
  """``config.sim``: stamps, sequences, PSF, galaxies and hosts, per-epoch errors, light curves
  and the variability selection."""
  s = ml_collections.ConfigDict()
  s.class_names = CLASS_NAMES
  s.stamp_size = 21
  s.n_w = 3  # images stacked per step
  s.max_steps = 20  # cap on N_d
  s.pre_detection = 5  # images before the first detection that start a transient's sequence
  # A transient detected before pre_detection images exist starts at the field's first image
  # (as preprocess.detection_start clips a real one) instead of being redrawn: without it such
  # sequences are never seen in training. (3 of the 10 real dev supernovae start at their
  # first image under config.real.detection_method 'photometry', 1 under 'difference'.)
  s.clip_early_start = True
  # How a simulated transient's first detection is found (sequences.first_detection):
  # 'difference': its flux minus the median of the field's first config.real.baseline_epochs
  # epochs (of its band, in surveys with several) above 5 sigma of that difference, as
  # difference-imaging surveys detect (HiTS: Forster et al. 2016) and as
  # preprocess.detection_start measures real files ('difference').
  # A supernova already bright in the first epochs is then detected only if it brightens by
  # 5 sigma more, else redrawn. 'flux': its own flux above the 5-sigma limit, under which 54 %
  # of the CPU simulator's supernovae (and 26 % of its asteroids) are bright from the first
  # image, where 1 of the 10 real dev supernovae is: an appearance after blank images is then
  # mostly an asteroid's (experiments/realism/sn_stats.py).
  s.detection = 'difference'
  # Epochs of its own sequence window (pre_detection images before the first detection, then
  # up to max_steps + n_w - 1 - pre_detection after) at which a simulated supernova must be
  # detected by the rule above; the windows of the other classes, drawn from a supernova's,
  # follow. A source detected once is what a difference-imaging survey cannot tell from an
  # asteroid or a bogus subtraction: HiTS's moving-object rejection and its supernova
  # candidates rest on repeated detections at one position (Forster et al. 2016, ApJ 832, 155,
  # Sec. 3), and a supernova is only labelled after it was seen again, so every real labelled
  # supernova was detected at least twice. With the paper's rule (one detection, 1 here) half of
  # the simulated supernovae that pass are detected at a single epoch of their window and a sixth
  # at none once noise is added (experiments/supernovae/: simulated median 1 epoch above
  # 5 sigma on the measured difference; the 10 real development supernovae 5.5, 9 of 10 >= 2).
  s.supernova_min_detections = 2
  s.transient_classes = ('Supernova', 'Asteroid')
  s.host_fraction_supernova = 0.5
  s.host_fraction_other = 0.05
  s.max_redraws = 256  # attempts per object before giving up (then the last draw is used)
  s.redraw_batch = 16  # attempts per object in round 1 (later rounds: 2x, unaccepted only)
  s.poisson = True  # exact Poisson draws; False uses the Gaussian approximation

  s.psf = ml_collections.ConfigDict()
  s.psf.kind = 'moffat'  # 'moffat' | 'gaussian' | 'bank'
  # PSF FWHM [arcsec] = seeing_offset_arcsec + seeing_scale * table seeing, everywhere the
  # simulator turns seeing into a PSF (rendering, photometry; render.seeing_to_fwhm_px).
  # Calibrated on the 40 real non-variable dev stars (926 bright epochs) by
  #   python -m rcnn_jax.realism --calibrate --data ../shared/data/hits2015/real_nonvariable_dev
  # (experiments/realism/psf_calibration.json): per-epoch Moffat fits with free beta give a
  # median beta of 3.74 +- 0.04; at beta 3.75 the fitted FWHM is -0.209 + 0.920 seeing
  # (relative scatter 4.2 %; a pure scale, 0.769, leaves 6.3 % and a trend with seeing).
  # The table's seeing is FWHM[px] x 0.27"/px, which explains only 2.6 % of the difference.
  # Scale 1 and offset 0 use the table seeing as the FWHM (other surveys).
  s.psf.moffat_beta = 3.75
  s.psf.seeing_scale = 0.92
  s.psf.seeing_offset_arcsec = -0.209
  # Per-epoch PSF width error: the star's FWHM = the relation above x exp(N(0, fwhm_scatter^2)).
  # The table seeing is one number per CCD and epoch; the fitted FWHM of the bright dev stars
  # scatters about the relation by 4.2 % (psf_calibration.json 'affine_rel_scatter', fit noise
  # negligible at peak > 50 sigma), so a constant star's peak changes by ~8 % between epochs
  # more than its seeing explains (realism.json peak_to_flux real/sim 16-84 %: 0.92-1.08).
  # The observer does not know it: photometry and preprocessing use the relation alone. 0 off.
  s.psf.fwhm_scatter = 0.042
  s.psf.bank_path = ''  # .npz with psf [K, S, S] and fwhm_arcsec [K] when kind == 'bank'

  s.galaxy = ml_collections.ConfigDict()
  s.galaxy.mag_range = (16.5, 23.5)
  s.galaxy.count_slope_dex = 0.35  # galaxy counts N(<m) ~ 10^(0.35 m) in g
  # SDSS-like size-magnitude relation of disks (half-light radius) and its scatter.
  s.galaxy.r_disk_arcsec_at_19 = 2.5
  s.galaxy.size_mag_slope = -0.15  # d log10 r / dm
  s.galaxy.r_disk_scatter_dex = 0.2
  s.galaxy.r_disk_clip_arcsec = (0.3, 8.0)
  s.galaxy.bulge_to_disk_radius = 0.4
  s.galaxy.q_disk_range = (0.2, 1.0)
  s.galaxy.q_bulge_range = (0.6, 1.0)
  s.galaxy.bulge_frac_beta = (1.2, 3.0)  # B/T ~ Beta(a, b): mostly disk-dominated
  # Supernova hosts given the SN's redshift (objects['redshift'], render.sample_host_at_redshift);
  # other hosts, and all hosts when no redshift is given, use the counts above.
  # Absolute magnitude: luminosity-weighted Schechter function (SN rate per galaxy ~ L, a simple
  # stand-in for the mass + SFR rates of Sullivan et al. 2006), L/L* ~ Gamma(alpha + 2), with
  # Blanton et al. (2003, ApJ 592, 819, Table 2) 0.1g: M* - 5 log10 h = -19.39, alpha = -0.89.
  s.galaxy.host_schechter_mstar_5logh = -19.39
  s.galaxy.host_schechter_alpha = -0.89
  s.galaxy.host_lum_range = (0.01, 10.0)  # L / L* support of the host luminosity draw
  # K-correction K_g(z) ~ k1 z (typical star-forming host, Blanton & Roweis 2007: ~0.25 at 0.1).
  s.galaxy.host_kcorr_per_z = 2.5
  # Half-light radius: Shen et al. (2003, MNRAS 343, 978) late types, eq. 18 and Table 1 (SDSS
  # r band): log10 R50[kpc] = -0.4 a M + (b - a) log10(1 + 10^(-0.4 (M - M0))) + g, scatter
  # of ln R sigma2 + (sigma1 - sigma2) / (1 + 10^(-0.8 (M - M0))). M_r = M_g - (g - r).
  s.galaxy.host_size_alpha = 0.21
  s.galaxy.host_size_beta = 0.53
  s.galaxy.host_size_gamma = -1.31
  s.galaxy.host_size_m0 = -20.52
  s.galaxy.host_size_sigma_ln = (0.48, 0.25)  # (sigma1, sigma2)
  s.galaxy.host_g_minus_r = 0.5
  s.galaxy.host_r_clip_arcsec = (0.05, 8.0)
  s.galaxy.host_z_grid = (0.001, 1.5, 256)  # (min, max, num) of the Planck18 distance tables

  # Per-epoch centres: every epoch's source (and host) centre is the object's sub-pixel centre
  # (with subpixel_per_epoch, one per epoch, uniform in the pixel) plus a registration error
  # N(0, centroid_jitter_px^2) per axis. Per-epoch calibration error: the epoch's astrophysical
  # flux (source and host) is multiplied by exp(N(0, zero_point_rms^2)) (fractional rms); the
  # sky is subtracted, and eq. 4 applied, with the table values, as the observer does.
  # Measured on the 40 real non-variable dev stars (bright epochs, seeing <= 2") by
  #   python -m rcnn_jax.realism --data ../shared/data/hits2015/real_nonvariable_dev \
  #       --variables ../shared/data/hits2015/real_labelled_dev
  # (experiments/realism/realism.json 'jitter_calibration', scatter.png;
  # rcnn_jax/realism/lcstats.py):
  # * the real stamps' fitted centres are uniform within the pixel from epoch to epoch (stamps
  #   cut at the nearest pixel of each epoch's position): pooled kurtosis -1.03 (uniform -1.2,
  #   Gaussian 0), per-star robust scatter 0.364 px per axis (a uniform's mad_std is 0.37);
  #   pooled variance - 1/12 - noise: registration error 0.089 +- 0.014 px;
  # * flux scatter between epochs 0.99 % (median over stars) against 0.33 % for the same star
  #   simulated with noise only: zero-point rms 0.0093 +- 0.0008 (in quadrature).
  # With these, simulated twins scatter 0.363 px (kurtosis -1.00) and 1.0 % as the real stars.
  s.astrometry = ml_collections.ConfigDict()
  s.astrometry.subpixel_per_epoch = True
  s.astrometry.centroid_jitter_px = 0.09
  s.calibration = ml_collections.ConfigDict()
  s.calibration.zero_point_rms = 0.0093  # 0.88 % with the sky error (sky_error.json)
  # Night-to-night calibration offsets, on top of the per-epoch error: measured on the same 40
  # stars by experiments/realism/night_offsets.py (night_offsets.json): the median deviation
  # of each night's epochs from the star's median flux (eq. 4 with the table's zero point and
  # sky, as every model input) has an epoch-weighted rms of 3.2 % over the nights (-11.8 % on
  # the moonlit night MJD 57080, -4.6 % on 57073); within nights the robust scatter is 1.2 %.
  # The per-epoch robust scatter above (mad_std) does not see these whole-night offsets.
  s.calibration.night_rms = 0.032
  s.calibration.night_boundary_mjd_frac = 0.65  # local noon at CTIO (~16 h UT)
  # Error of the table's sky at the object, per epoch: the image's sky is the table's plus
  # N(0, sky_rms_adu^2 + (sky_rms_fraction * sky)^2), while preprocessing subtracts the table's.
  # Measured on the same 40 stars by experiments/realism/sky_error.py (sky_error.json): their
  # flux scatter grows as they get fainter as a zero-point error (same fraction at every flux)
  # plus a coherent sky error s over the 8 px aperture (A s / F) would make it: s = 0.84 ADU
  # (bootstrap 16-84 %: 0.28-1.0) at the median dark sky of 118 ADU, zero-point rms 0.88 %.
  # Scaled with the sky (a flat-field or illumination error multiplies the sky pedestal) it is
  # 0.7 % of the sky, ~4 ADU on a moonlit night of 600 ADU. The stamps' ring residuals
  # (experiments/real_dev/sky_residual.py) are wider (2.3 % dark, 1.1 % moonlit) but hold the
  # stars' wings and neighbours, which do not shift a whole aperture.
  # Off by default: the estimate is weak (0.28-1.0 ADU), its growth with the sky level is
  # assumed, not measured (the moonlit epochs are 9 % of the constant stars'), and the CPU
  # job trained with 0.007 called all 40 real non-variable dev stars variable (0.00, against
  # 0.62 for the same simulator without it; experiments/real_dev/README.md, v4 and v4b).
  # Without it the whole flux-scatter excess is the zero-point error (0.93 %).
  s.calibration.sky_rms_adu = 0.0
  s.calibration.sky_rms_fraction = 0.0

  # Training batches with observing conditions drawn wider than the survey's table
  # (simulator.randomise_conditions; validation and test sets never): per-epoch log-normal
  # seeing and sky factors, per-epoch and per-object zero-point offsets (mag), and a per-object
  # factor U(1, calibration_max_factor) on the unknown calibration errors above. Off here; the
  # ``wide`` modifier (configs/variants/wide.py) sets the widths and their reasons.
  s.randomise_conditions = ml_collections.ConfigDict()
  s.randomise_conditions.seeing_log_sigma = 0.0
  s.randomise_conditions.sky_log_sigma = 0.0
  s.randomise_conditions.zero_point_sigma_mag = 0.0
  s.randomise_conditions.zero_point_object_sigma_mag = 0.0
  s.randomise_conditions.calibration_max_factor = 1.0

  s.lightcurves = ml_collections.ConfigDict()
  # Stellar magnitude prior, shared by every stellar class (RR Lyrae, Cepheids, binaries,
  # non-variables, asteroids) so that magnitude is no class cue the real sky lacks. With
  # probability bright_weight uniform in bright_range, otherwise Fig. 1's exponential
  # star-count law times (1 - erf(m - m_cutoff)) / 2. The paper's prior is bright_weight 0 and
  # m_cutoff_rrlyrae 21.5: a bright variable then leans RR Lyrae 2.5 to 1, and g < 19.5 held
  # ~5 % of the stars, where every real labelled HiTS development object lies (non-variables
  # g 18.3-19.4, RR Lyrae median 18.4, binaries 17.3; issue 12), and where the HiTS RR Lyrae
  # lie: Medina et al. (2018, ApJ 855, 43) found theirs at heliocentric distances of about 10
  # to 200 kpc, g ~ 0.6 + 5 log10(d / 10 pc) ~ 15.6 to 22, most within 10-60 kpc (g 15.6-19.5).
  # Half the stars are drawn uniform in 16-20 (16: near saturation at HiTS's zero points;
  # the bright half gives ~0.12 of the stars per magnitude there).
  s.lightcurves.m_cutoff = 22.8
  s.lightcurves.m_cutoff_rrlyrae = 22.8  # the paper's 21.5 made magnitude an RR Lyrae cue
  s.lightcurves.bright_weight = 0.5
  s.lightcurves.bright_range = (16.0, 20.0)
  s.lightcurves.mag_range = (14.0, 26.0)  # support of Fig. 1's distribution
  s.lightcurves.count_slope_dex = 0.3  # exponential star-count law, d log10 N / dm
  s.lightcurves.ia_fraction = 0.5  # of simulated supernovae
  s.lightcurves.ia_absmag_sigma = 0.15
  s.lightcurves.ii_absmag = (-16.8, 1.0)  # mean and scatter (Richardson et al. 2014)
  # Redshift ranges: beyond them no SN reaches HiTS's limiting magnitudes (~24.5 at best).
  s.lightcurves.z_max = 0.8
  s.lightcurves.z_max_ii = 0.4
  s.lightcurves.num_z = 48
  s.lightcurves.phase_step = 1.0  # days, Ia template grid
  # RR Lyrae (Sesar et al. 2010, SDSS Stripe 82, g band; shapes in lightcurves.py): period
  # (mean, sd) and clip in days, Bailey relation A_g = a0 + slope (P - <P>) +- scatter for
  # RRab, uniform A_g for RRc, and the shape parameter q (rise 1/2 - asin(q)/pi of a cycle).
  s.lightcurves.rrc_fraction = 0.25
  s.lightcurves.rrab_period_d = (0.60, 0.06)
  s.lightcurves.rrab_period_clip_d = (0.43, 0.85)
  s.lightcurves.rrab_amp_bailey = (1.0, -3.0, 0.15)
  s.lightcurves.rrab_amp_clip = (0.5, 1.4)
  s.lightcurves.rrab_q = (0.80, 0.89)  # with rrab_minimum: rise 0.12-0.18 of a cycle
  # (centre, width, strength) of the RRab standstill into a broad minimum: magnitude skewness
  # -0.59 over a dense cycle (-0.67 for the literature's V-band series; lightcurves.py).
  s.lightcurves.rrab_minimum = (0.62, 0.2, 0.8)
  s.lightcurves.rrc_period_d = (0.32, 0.04)
  s.lightcurves.rrc_period_clip_d = (0.22, 0.45)
  s.lightcurves.rrc_amp = (0.3, 0.6)
  s.lightcurves.rrc_q = (0.25, 0.45)  # rise 0.35-0.42; R21 0.12-0.22
  # Cepheids (Simon & Lee 1981; Hertzsprung progression, Bono et al. 2000): log10 period (d),
  # g amplitude, shape q (rise 0.23-0.33) with its dip at 10 d, and the bump (a standstill)
  # at phase slope (10 - P) after maximum light (clipped), for periods in bump_periods_d.
  s.lightcurves.cepheid_log_period_d = (0.3, 1.6)
  s.lightcurves.cepheid_amp = (0.4, 1.2)
  s.lightcurves.cepheid_q = (0.5, 0.75)
  s.lightcurves.cepheid_q_dip = 0.6
  s.lightcurves.cepheid_bump_slope = 0.05  # 0.2 after maximum at 6 d, 0.2 before at 14 d
  s.lightcurves.cepheid_bump_phase_clip = (-0.3, 0.35)
  s.lightcurves.cepheid_bump_periods_d = (6.0, 16.0)
  s.lightcurves.cepheid_bump_width = 0.05
  s.lightcurves.cepheid_bump_strength = 0.8  # < 1: the phase slows to 20 % at the standstill
  # Eclipsing binaries: contact (W UMa; Rucinski 1993, 1997, 2007) or detached (two spheres).
  s.lightcurves.contact_fraction = 0.5
  s.lightcurves.contact_log_period_d = (-0.43, 0.1)  # log10 P ~ N: median 0.37 d
  s.lightcurves.contact_period_clip_d = (0.22, 0.6)
  s.lightcurves.contact_amp = (0.1, 0.8)  # full amplitude, mag
  # Amplitude distribution (lightcurves.contact_amplitude): flat on [0.1, flat_to], falling
  # linearly to zero at 0.8 mag, as Rucinski (2001, AJ 122, 1007) computes for isotropic orbits
  # and the observed mass ratios (A(a) ~ constant for small a, maximum near 0.2-0.25 mag, zero
  # at the q = 1 edge-on ~0.75-0.8 mag); median 0.32 mag. Without this field (configs saved
  # before it) uniform on contact_amp, median 0.45: the simulated binaries that pass the
  # variability selection then have a median 5-95 % amplitude of 0.47 mag (0.36 in the real
  # HiTS held-out sample) and reach into the RR Lyrae amplitudes
  # (experiments/realism/eb_stats.py, experiments/hits2015_rcnn/README.md).
  s.lightcurves.contact_amp_flat_to = 0.25
  s.lightcurves.contact_a1_over_a2 = (0.0, 0.15)  # primary deeper or equal
  s.lightcurves.contact_oconnell = (-0.03, 0.03)  # b1 / |a2|: maxima within ~0.02 mag
  s.lightcurves.detached_log_period_d = (-0.3, 1.3)  # log-uniform 0.5-20 d
  s.lightcurves.detached_mass_msun = (1.5, 3.0)  # M1 + M2
  s.lightcurves.detached_radius_rsun = (0.8, 2.0)  # R1
  s.lightcurves.detached_radius_ratio = (0.5, 1.0)  # R2 / R1
  s.lightcurves.detached_surface_ratio = (0.2, 1.0)  # J = s2 / s1
  s.lightcurves.detached_max_fractional_radius = 0.34  # inside the Roche lobe (0.38 at q = 1)

  # Variability selection (lightcurves.detectable_variability), applied to every attempt of
  # these classes inside the simulator like the transient redraw: an attempt is kept when at
  # least min_epochs of the epochs of its own sequence window deviate from the median flux by
  # more than k_sigma sigma, sigma = sqrt((F_lim5 / 5 F)^2 + floor^2) relative to the median
  # flux F (F_lim5: the epoch's 5-sigma limiting flux; floor: epoch-to-epoch calibration, the
  # 1.2 % flux scatter of the real constant dev stars, issue 12). An empty tuple turns it off.
  # Fractions kept: python -m rcnn_jax.simulate --config configs/hits.py:cpu --kept_fraction.
  # Threshold: 3 epochs beyond 3 sigma of the constant stars' whole calibration scatter
  # (floor 3.3 % = the per-epoch 0.93 % and the night-to-night 3.2 % of sim.calibration in
  # quadrature), so for a bright star at least 3 epochs off by 10 %: beyond what the real
  # constant stars show. With 2 epochs beyond 3 sigma of a 1.2 % floor (3.6 %) the first CPU
  # model called 35 of the 40 real dev non-variables eclipsing binaries
  # (experiments/real_dev/README.md).
  s.variability = ml_collections.ConfigDict()
  s.variability.classes = ('RRLyrae', 'Cepheid', 'EclipsingBinary')
  s.variability.min_epochs = 3
  s.variability.k_sigma = 3.0
  s.variability.floor = 0.033
  return s
