"""Channel models for wireless networks (NumPy only; no TensorFlow).

3GPP TR 38.901 urban-macro (UMa) path loss, breakpoint distance and LOS probability (`pathloss`),
log-normal shadow fading (`shadowing`), Rayleigh and Rician small-scale fading (`fading`), thermal
noise, unit conversions and the control-channel threshold (`link_budget`), and transmitter-receiver
layouts (`layout`). Units: metres, GHz for carrier frequencies, dB / dBm / W for powers. The exact
specification is docs/design.md, section 7; each module documents how it treats out-of-range inputs.
"""

from channel_models.fading import db_to_k_factor, rayleigh_amplitude, rician_amplitude
from channel_models.layout import link_distances, paired_disc_layout, uniform_square_layout
from channel_models.link_budget import (
    apply_threshold,
    control_channel_threshold_db,
    db_to_amplitude,
    dbm_to_w,
    thermal_noise_dbm,
    thermal_noise_w,
    w_to_dbm,
)
from channel_models.pathloss import (
    PATHLOSS_MODELS,
    PathlossModel,
    breakpoint_distance,
    distance_3d,
    get_pathloss_model,
    sample_environment_height,
    uma_los,
    uma_los_probability,
    uma_nlos,
    uma_nlos_optional,
)
from channel_models.shadowing import clipped_normal_std, shadow_fading_db

__all__ = [
    "PATHLOSS_MODELS",
    "PathlossModel",
    "apply_threshold",
    "breakpoint_distance",
    "clipped_normal_std",
    "control_channel_threshold_db",
    "db_to_amplitude",
    "db_to_k_factor",
    "dbm_to_w",
    "distance_3d",
    "get_pathloss_model",
    "link_distances",
    "paired_disc_layout",
    "rayleigh_amplitude",
    "rician_amplitude",
    "sample_environment_height",
    "shadow_fading_db",
    "thermal_noise_dbm",
    "thermal_noise_w",
    "uma_los",
    "uma_los_probability",
    "uma_nlos",
    "uma_nlos_optional",
    "uniform_square_layout",
    "w_to_dbm",
]
