"""Power-allocation channel dataset (docs/design.md, section 7): generator, CLI kind and streaming loader.

Each sample is the N x N amplitude-gain matrix of N transmitter-receiver pairs,
H[j, i] = 10^(-(PL(d_ji) + X_ji)/20) * r_ji, the gain from transmitter j to receiver i (H[i, i] is the
direct link), with PL a TR 38.901 UMa path loss on the distance d_ji (clipped into the model's
10 m - 5 km range), X a clipped log-normal shadowing and r a small-scale fading amplitude (E r^2 = 1).

Layouts and batches. A layout is one placement of the N pairs. Training uses `layouts` layouts, each
for `batches_per_layout` consecutive batches of `batch_size` samples (batches l*M ... (l+1)*M - 1 for
layout l), so the paper preset has 100 layouts x 100 batches x 64 samples = 640 000 matrices (the
paper: "640 000 realizations of CSI matrices under 100 realizations of transceiver locations"). The
test split has `test_batches` batches with a fresh layout every `test_batches_per_layout` batches
(default 1: one layout per batch of 64, as in the authors' code; `--layouts 10000
--batches-per-layout 1` does the same for training). Path loss depends on the layout
only; shadowing is drawn once per link and layout (it is a location-bound large-scale effect) unless
`shadowing_per = "sample"`; fading is drawn afresh for every sample.

Control-channel threshold: an interfering entry (j != i) whose amplitude is below
10^(-PL_max/20), PL_max = P_max[dBm] - N_0[dBm] - SNR_req + margin (138.86 dB for the preset), is set
to 0, so H's sparsity pattern is the interference graph of the sample. The test compares the final
amplitude including fading. Direct links are never zeroed (the threshold decides which interferers a
receiver hears, not whether a pair exists).

Random streams: SeedSequence(seed) spawns one stream per split, which spawns one per layout, which
spawns separate streams for positions, shadowing and fading; so a file is a pure function of the
config, identical bytes for identical configs.

File layout (HDF5, schema "power-allocation" version 1; see `datasets.storage` for the common
attributes and the checksum). For split in {train, test}:

* `<split>/H`      float32 (num_batches, batch_size, N, N), chunked one batch per chunk, H[..., j, i];
* `<split>/tx_pos` float64 (num_batches, N, 2), transmitter x, y in metres of each batch's layout;
* `<split>/rx_pos` float64 (num_batches, N, 2), receiver positions.

Root attributes besides the common ones: `noise_power_w` and `noise_dbm` (sigma^2), `pmax_w`,
`bandwidth_hz`, `shadowing_std_db`, `shadowing_source` (which value was used: the authors' 7.2 dB,
the standard's, custom or disabled) and, if thresholding was applied, `threshold_db`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from channel_models import fading, layout, link_budget, pathloss, shadowing
from datasets import cli, storage, streaming

GENERATOR = f"{__name__} 1.0"
AUTHORS_SHADOWING_STD_DB = 7.2
SPLITS = ("train", "test")
FADING_CHOICES = ("rayleigh", "rician", "none")
MAX_LAYOUT_M = 1e6
"""Largest --area and --pair-max-distance (m): far beyond the 5 km the path loss holds for (larger distances are
clipped to it), and small enough that squared distances stay finite."""
_WRITE_BYTES = 32 * 2**20  # batches of H are computed and written in blocks of about this size

SCHEMA = storage.Schema(
    name="power-allocation",
    version=1,
    attributes=("noise_dbm", "bandwidth_hz", "shadowing_std_db", "shadowing_source"),
    positive_attributes=("noise_power_w", "pmax_w"),
    arrays=tuple(
        spec
        for split in SPLITS
        for spec in (
            storage.ArraySpec(
                f"{split}/H",
                (f"{split}_batches", "batch_size", "pairs", "pairs"),
                np.float32,
                (storage.check_finite, storage.check_non_negative),
            ),
            storage.ArraySpec(f"{split}/tx_pos", (f"{split}_batches", "pairs", "xy"), np.float64),
            storage.ArraySpec(f"{split}/rx_pos", (f"{split}_batches", "pairs", "xy"), np.float64),
        )
    ),
)


@dataclass(frozen=True)
class PowerAllocationConfig:
    """Every generation parameter; defaults are the paper preset (docs/design.md, section 7).

    Field names equal the CLI flags (`batches_per_layout` is `--batches-per-layout`). Units: area and
    distances in m (area is the side of the square; the disc layout uses a disc of diameter `area`),
    carrier in GHz, bandwidth in MHz, pmax in W, shadowing std in dB (0: none) and its clipping in
    multiples of the std (0: none), noise temperature in K, noise in dBm (None: k*T*B).
    """

    pairs: int = 25
    area: float = 1000.0
    layout: str = "square"
    pair_min_distance: float = 10.0
    pair_max_distance: float = 100.0
    layouts: int = 100
    batches_per_layout: int = 100
    test_batches: int = 100
    test_batches_per_layout: int = 1
    batch_size: int = 64
    carrier_ghz: float = 0.9
    bandwidth_mhz: float = 5.0
    pmax: float = 5.0
    pathloss: str = "uma-nlos-optional"
    tx_height: float = 1.5
    rx_height: float = 1.5
    shadowing_std: float = AUTHORS_SHADOWING_STD_DB
    shadowing_clip: float = 2.0
    shadowing_per: str = "layout"
    fading: str = "rayleigh"
    rician_k: float = 1.0
    noise_temperature: float = link_budget.PAPER_NOISE_TEMPERATURE_K
    noise_dbm: float | None = None
    threshold: bool = True
    snr_required: float = 10.0
    margin: float = 5.0
    seed: int = 0

    def __post_init__(self):
        self._validate()

    @property
    def num_batches(self) -> dict[str, int]:
        """Number of batches per split."""
        return {"train": self.layouts * self.batches_per_layout, "test": self.test_batches}

    @property
    def noise_power_dbm(self) -> float:
        """Noise power in dBm: `noise_dbm` if set, else k*T*B (-106.87 dBm for the preset)."""
        if self.noise_dbm is not None:
            return float(self.noise_dbm)
        return float(link_budget.thermal_noise_dbm(self.bandwidth_mhz * 1e6, self.noise_temperature))

    @property
    def threshold_db(self) -> float | None:
        """Control-channel path-loss threshold in dB (138.86 for the preset), None if disabled."""
        if not self.threshold:
            return None
        return float(
            link_budget.control_channel_threshold_db(
                self.pmax, self.noise_power_dbm, self.snr_required, self.margin
            )
        )

    @property
    def shadowing_source(self) -> str:
        """Which shadowing std was used, for the metadata."""
        standard = pathloss.get_pathloss_model(self.pathloss).shadowing_std_db
        if self.shadowing_std == 0:
            return "disabled"
        if self.shadowing_std == AUTHORS_SHADOWING_STD_DB:
            return "paper authors' value (7.2 dB)"
        if self.shadowing_std == standard:
            return f"3GPP TR 38.901 Table 7.4.1-1 value for {self.pathloss} ({standard:g} dB)"
        return "custom"

    def _validate(self) -> None:
        cli.check_counts(
            self,
            (
                "pairs",
                "layouts",
                "batches_per_layout",
                "test_batches",
                "test_batches_per_layout",
                "batch_size",
            ),
        )
        positive = ("area", "bandwidth_mhz", "pmax", "tx_height", "rx_height", "noise_temperature")
        cli.check_numbers(self, positive + ("pair_max_distance",), minimum=0.0, strict=True)
        cli.check_numbers(
            self, ("shadowing_std", "shadowing_clip", "rician_k", "pair_min_distance"), minimum=0.0
        )
        cli.check_numbers(
            self, ("snr_required", "margin") + (() if self.noise_dbm is None else ("noise_dbm",))
        )
        cli.check_choice(self, "pathloss", tuple(pathloss.PATHLOSS_MODELS))
        cli.check_choice(self, "layout", ("square", "disc"))
        cli.check_choice(self, "shadowing_per", ("layout", "sample"))
        cli.check_choice(self, "fading", FADING_CHOICES)
        cli.check_seed(self)
        if not pathloss.MIN_FREQUENCY_GHZ <= self.carrier_ghz <= pathloss.MAX_FREQUENCY_GHZ:
            raise ValueError(
                f"--carrier-ghz must be in [{pathloss.MIN_FREQUENCY_GHZ:g}, "
                f"{pathloss.MAX_FREQUENCY_GHZ:g}] GHz (TR 38.901 Table 7.4.1-1), got {self.carrier_ghz}"
            )
        if (
            self.pathloss != "uma-nlos-optional"
            and min(self.tx_height, self.rx_height) <= pathloss.DEFAULT_H_E
        ):
            raise ValueError(
                f"--tx-height and --rx-height must exceed h_E = 1 m for {self.pathloss} "
                f"(breakpoint distance), got {self.tx_height} and {self.rx_height}"
            )
        if not pathloss.MIN_H_UT <= self.rx_height <= pathloss.MAX_H_UT:
            raise ValueError(
                f"--rx-height must be in [{pathloss.MIN_H_UT:g}, {pathloss.MAX_H_UT:g}] m, the user-terminal "
                f"heights of the UMa path loss (TR 38.901 Table 7.4.1-1), got {self.rx_height:g}"
            )
        if self.pair_min_distance > self.pair_max_distance:
            raise ValueError(
                f"--pair-min-distance ({self.pair_min_distance}) must not exceed --pair-max-distance "
                f"({self.pair_max_distance})"
            )
        for name in ("area", "pair_max_distance"):
            if getattr(self, name) > MAX_LAYOUT_M:
                raise ValueError(f"--{name.replace('_', '-')} must be at most {MAX_LAYOUT_M:g} m (the path loss "
                                 f"holds to {pathloss.MAX_DISTANCE_2D:g} m), got {getattr(self, name):g}")
        single = np.finfo(np.float32)  # compared in dBm: 10 ** (dBm / 10) itself overflows for large values
        lowest, highest = (float(link_budget.w_to_dbm(float(w))) for w in (single.tiny, single.max))
        if not single.tiny <= self.pmax <= single.max:
            raise ValueError(f"--pmax {self.pmax:g} W is outside the float32 range the powers are computed in "
                             f"({single.tiny:.3g} to {single.max:.3g} W)")
        if self.noise_dbm is None:
            try:
                noise = float(link_budget.thermal_noise_dbm(self.bandwidth_mhz * 1e6, self.noise_temperature))
            except ValueError:  # k T B is 0 or inf W in float64
                noise = math.nan
            if not lowest <= noise <= highest:
                value = f"{noise:.4g} dBm" if math.isfinite(noise) else "0 or infinite W"
                raise ValueError(
                    f"the noise power k T B of --bandwidth-mhz {self.bandwidth_mhz:g} and --noise-temperature "
                    f"{self.noise_temperature:g} ({value}) is outside the float32 range the channels "
                    f"and powers are computed in ({lowest:.1f} to {highest:.1f} dBm)")
        if self.noise_dbm is not None and not lowest <= self.noise_dbm <= highest:
            raise ValueError(
                f"--noise-dbm {self.noise_dbm:g} is outside the float32 range the channels and powers are "
                f"computed in ({lowest:.1f} to {highest:.1f} dBm)"
            )


def dims(config: PowerAllocationConfig) -> dict[str, int]:
    """The size of every dimension of `SCHEMA` for `config` (file checks and size estimates)."""
    return {
        "train_batches": config.num_batches["train"],
        "test_batches": config.num_batches["test"],
        "batch_size": config.batch_size,
        "pairs": config.pairs,
        "xy": 2,
    }


# Peak-memory model of `generate` (bytes; measured with tracemalloc, rounded up): a layout's path loss
# holds up to 8 float64 (N, N) arrays at once (uma-nlos, the largest), then keeps one; a block of
# channel gains (`_channel_block`) holds, per gain, the float32 gains (and the second component of
# Rician fading) and the threshold's boolean mask, or 32 bytes of float64 dB values and their
# conversion with shadowing drawn per sample.
_LAYOUT_SQUARES = 8
_BASE_BYTES = 64 * 2**20  # h5py and the writer's buffers (the model is counted 10% high, too)


def estimate(config: PowerAllocationConfig) -> cli.Estimate:
    """File size and peak memory of `generate`, which streams blocks of about `_WRITE_BYTES` of H."""
    n, b = config.pairs, config.batch_size
    square = n * n
    per_layout = max(
        min(config.batches_per_layout, config.num_batches["train"]),
        min(config.test_batches_per_layout, config.num_batches["test"]),
    )
    block = min(per_layout, max(1, _WRITE_BYTES // (4 * b * square)))  # batches per block, as _write_split
    gains = block * b * square
    positions = 2 * 16 * n * per_layout  # tx and rx of a layout, copied per batch by `append`
    per_gain = 1 + (32 if config.shadowing_per == "sample" else 8 if config.fading == "rician" else 4)
    peak = max(8 * _LAYOUT_SQUARES * square, 8 * square + per_gain * gains)
    return cli.Estimate(
        file_bytes=storage.estimate_file_bytes(SCHEMA, dims(config)),
        memory_bytes=int(1.1 * (peak + positions)) + _BASE_BYTES,
        driver="--pairs^2 x --batch-size (the channel gains of a batch)",
    )


def generate(config: PowerAllocationConfig, out: str | Path, quiet: bool = True) -> Path:
    """Write the dataset of `config` to `out` atomically (see the module docstring); returns the path."""
    out = Path(out)
    threshold_db = config.threshold_db
    attrs = {
        "noise_dbm": config.noise_power_dbm,
        "noise_power_w": float(link_budget.dbm_to_w(config.noise_power_dbm)),
        "pmax_w": float(config.pmax),
        "bandwidth_hz": config.bandwidth_mhz * 1e6,
        "shadowing_std_db": float(config.shadowing_std),
        "shadowing_source": config.shadowing_source,
        **({} if threshold_db is None else {"threshold_db": threshold_db}),
    }
    split_seeds = dict(zip(SPLITS, np.random.SeedSequence(config.seed).spawn(len(SPLITS)), strict=True))
    total = sum(config.num_batches.values())
    with (
        storage.write_dataset(out, SCHEMA, dataclasses.asdict(config), GENERATOR, attrs) as writer,
        cli.progress_bar(total, f"power-allocation -> {out.name}", quiet) as bar,
    ):
        for split in SPLITS:
            _write_split(writer, config, split, split_seeds[split], bar)
    return out


def _write_split(writer: storage.DatasetWriter, config: PowerAllocationConfig, split: str, seed, bar) -> None:
    num_batches = config.num_batches[split]
    per_layout = config.batches_per_layout if split == "train" else config.test_batches_per_layout
    n, b = config.pairs, config.batch_size
    writer.create_array(f"{split}/H", (num_batches, b, n, n))
    writer.create_array(f"{split}/tx_pos", (num_batches, n, 2))
    writer.create_array(f"{split}/rx_pos", (num_batches, n, 2))
    block = max(1, _WRITE_BYTES // (4 * b * n * n))
    num_layouts = -(-num_batches // per_layout)
    for layout_index, layout_seed in enumerate(seed.spawn(num_layouts)):
        position_rng, shadowing_rng, fading_rng = (np.random.default_rng(s) for s in layout_seed.spawn(3))
        layout_batches = min(per_layout, num_batches - layout_index * per_layout)
        tx, rx = _draw_layout(config, position_rng)
        writer.append(f"{split}/tx_pos", np.broadcast_to(tx, (layout_batches, n, 2)))
        writer.append(f"{split}/rx_pos", np.broadcast_to(rx, (layout_batches, n, 2)))
        model = pathloss.get_pathloss_model(config.pathloss)
        loss_db = model.function(
            layout.link_distances(tx, rx),
            config.carrier_ghz,
            h_bs=config.tx_height,
            h_ut=config.rx_height,
            clamp=True,
        )
        if config.shadowing_per == "layout":
            loss_db = loss_db + _shadowing_db(config, loss_db.shape, shadowing_rng)
        for start in range(0, layout_batches, block):
            count = min(block, layout_batches - start)
            writer.append(
                f"{split}/H", _channel_block(config, loss_db, (count, b, n, n), shadowing_rng, fading_rng)
            )
            bar.update(count)


def _draw_layout(config: PowerAllocationConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if config.layout == "square":
        return layout.uniform_square_layout(config.pairs, config.area, rng)
    return layout.paired_disc_layout(
        config.pairs, config.area / 2, config.pair_min_distance, config.pair_max_distance, rng
    )


def _shadowing_db(config: PowerAllocationConfig, shape, rng: np.random.Generator) -> np.ndarray:
    return shadowing.shadow_fading_db(
        shape, config.shadowing_std, rng, clip_sigmas=config.shadowing_clip or None
    )


def _channel_block(
    config: PowerAllocationConfig,
    loss_db: np.ndarray,
    shape: tuple[int, ...],
    shadowing_rng: np.random.Generator,
    fading_rng: np.random.Generator,
) -> np.ndarray:
    """H for `shape` = (batches, batch_size, N, N): large-scale amplitude times fading, thresholded."""
    if config.shadowing_per == "sample":
        loss_db = loss_db + _shadowing_db(config, shape, shadowing_rng)
    amplitude = link_budget.db_to_amplitude(-loss_db).astype(np.float32)
    if config.fading == "rayleigh":
        gains = fading.rayleigh_amplitude(shape, fading_rng)
    elif config.fading == "rician":
        gains = fading.rician_amplitude(shape, config.rician_k, fading_rng)
    else:
        gains = np.ones(shape, dtype=np.float32)
    gains *= amplitude
    if config.threshold:
        link_budget.apply_threshold(gains, config.threshold_db)
    return gains


class PowerAllocationBatch(NamedTuple):
    """One batch: `H` (batch_size, N, N) float32 with H[s, j, i] from transmitter j to receiver i, and the
    layout's `tx_pos`, `rx_pos` (N, 2) in metres; `index` is the batch's position in its split."""

    index: int
    H: np.ndarray
    tx_pos: np.ndarray
    rx_pos: np.ndarray


class PowerAllocationDataset(storage.DatasetReader):
    """Streaming, validating reader of a power-allocation file.

    Opening checks the schema, the arrays' presence, dtypes and shapes (against the config too) and
    raises `storage.DatasetError` naming the file and the problem; each batch read is checked for
    finite, non-negative gains. `verify()` makes a full pass including the checksum. Memory holds one
    batch at a time. Example::

        with PowerAllocationDataset("data/power_allocation.h5") as data:
            sigma2, pmax = data.noise_power_w, data.pmax_w
            for batch in data.batches("train", shuffle=True, seed=0, epoch=epoch):
                step(batch.H)
    """

    config_class = PowerAllocationConfig

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    def expected_dims(self):
        return dims(self.parsed_config)

    @property
    def noise_power_w(self) -> float:
        """Noise power sigma^2 in W the data was generated for."""
        return float(self.attrs["noise_power_w"])

    @property
    def pmax_w(self) -> float:
        """Maximum transmit power in W the data was generated for."""
        return float(self.attrs["pmax_w"])

    @property
    def num_pairs(self) -> int:
        return self.dims["pairs"]

    @property
    def batch_size(self) -> int:
        return self.dims["batch_size"]

    def num_batches(self, split: str = "train") -> int:
        """Number of batches of `split` ("train" or "test")."""
        return self.dims[f"{_check_split(split)}_batches"]

    def batch(self, split: str, index: int) -> PowerAllocationBatch:
        """Batch `index` of `split`, read from disk and checked (IndexError outside 0..num_batches - 1)."""
        index = storage.check_item(index, self.num_batches(split), f"{split} batch")
        return PowerAllocationBatch(
            index,
            self.read(f"{split}/H", index),
            self.read(f"{split}/tx_pos", index),
            self.read(f"{split}/rx_pos", index),
        )

    def batches(
        self, split: str = "train", shuffle: bool = False, seed: int | None = None, epoch: int = 0
    ) -> Iterator[PowerAllocationBatch]:
        """Every batch of `split` once, in file order or shuffled by (seed, epoch) (see
        `streaming.item_order`)."""
        for index in streaming.item_order(self.num_batches(split), shuffle, seed, epoch):
            yield self.batch(split, int(index))

    def as_tf_dataset(self, split: str = "train", shuffle: bool = False, seed: int | None = None):
        """A `tf.data.Dataset` of dicts {"H": (B, N, N) float32, "tx_pos", "rx_pos": (N, 2) float64}.

        Streams from this open file; with `shuffle`, each pass over the dataset uses the next epoch's
        order. Keep the reader open while the dataset is in use.
        """
        n, b = self.num_pairs, self.batch_size

        def items(epoch: int):
            for batch in self.batches(split, shuffle, seed, epoch):
                yield {"H": batch.H, "tx_pos": batch.tx_pos, "rx_pos": batch.rx_pos}

        signature = {
            "H": ((b, n, n), np.float32),
            "tx_pos": ((n, 2), np.float64),
            "rx_pos": ((n, 2), np.float64),
        }
        return streaming.to_tf_dataset(items, signature)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _shadowing_std(text: str) -> float | str:
    if text == "standard":
        return text
    return cli.non_negative_float(text)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PowerAllocationConfig()
    net = parser.add_argument_group("network and layouts")
    net.add_argument("--pairs", type=cli.positive_int, default=d.pairs, help="transmitter-receiver pairs N")
    net.add_argument("--area", type=cli.positive_float, default=d.area, help="side of the square area in m")
    net.add_argument(
        "--layout",
        choices=("square", "disc"),
        default=d.layout,
        help="square: transmitters and receivers independent uniform in the square; disc: transmitters "
        "uniform in a disc of diameter --area, each receiver within --pair-min/max-distance "
        "of its transmitter",
    )
    net.add_argument(
        "--pair-min-distance",
        type=cli.non_negative_float,
        default=d.pair_min_distance,
        help="disc layout: min transmitter-receiver distance of a pair in m",
    )
    net.add_argument(
        "--pair-max-distance",
        type=cli.positive_float,
        default=d.pair_max_distance,
        help="disc layout: max transmitter-receiver distance of a pair in m",
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--layouts", type=cli.positive_int, default=d.layouts, help="training layouts")
    sizes.add_argument(
        "--batches-per-layout",
        type=cli.positive_int,
        default=d.batches_per_layout,
        help="consecutive training batches per layout",
    )
    sizes.add_argument("--test-batches", type=cli.positive_int, default=d.test_batches, help="test batches")
    sizes.add_argument(
        "--test-batches-per-layout",
        type=cli.positive_int,
        default=d.test_batches_per_layout,
        help="consecutive test batches per test layout",
    )
    sizes.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size, help="samples per batch")
    radio = parser.add_argument_group("radio")
    radio.add_argument(
        "--carrier-ghz",
        type=cli.positive_float,
        default=d.carrier_ghz,
        help="carrier frequency in GHz (0.5-100)",
    )
    radio.add_argument(
        "--bandwidth-mhz", type=cli.positive_float, default=d.bandwidth_mhz, help="bandwidth in MHz"
    )
    radio.add_argument("--pmax", type=cli.positive_float, default=d.pmax, help="maximum transmit power in W")
    radio.add_argument(
        "--pathloss",
        choices=tuple(pathloss.PATHLOSS_MODELS),
        default=d.pathloss,
        help="TR 38.901 UMa path-loss model (distances clipped into 10 m - 5 km)",
    )
    radio.add_argument(
        "--tx-height",
        type=cli.positive_float,
        default=d.tx_height,
        help="transmitter height in m (h_BS of the model)",
    )
    radio.add_argument(
        "--rx-height",
        type=cli.positive_float,
        default=d.rx_height,
        help="receiver height in m (h_UT of the model)",
    )
    radio.add_argument(
        "--shadowing-std",
        type=_shadowing_std,
        default=d.shadowing_std,
        help="log-normal shadowing std in dB; 0 disables; 'standard' takes the model's TR 38.901 "
        "value (7.8 dB for uma-nlos-optional); the default is the paper authors' value",
    )
    radio.add_argument(
        "--shadowing-clip",
        type=cli.non_negative_float,
        default=d.shadowing_clip,
        help="clip shadowing at +- this many stds; 0 disables clipping",
    )
    radio.add_argument(
        "--shadowing-per",
        choices=("layout", "sample"),
        default=d.shadowing_per,
        help="draw shadowing once per link and layout, or afresh per sample",
    )
    radio.add_argument("--fading", choices=FADING_CHOICES, default=d.fading, help="small-scale fading")
    radio.add_argument(
        "--no-fading", dest="fading", action="store_const", const="none", help="same as --fading none"
    )
    radio.add_argument(
        "--rician-k",
        type=cli.non_negative_float,
        default=d.rician_k,
        help="linear Rician K-factor (with --fading rician)",
    )
    radio.add_argument(
        "--noise-temperature",
        type=cli.positive_float,
        default=d.noise_temperature,
        help="noise temperature in K for k*T*B (298 K gives the paper's -106.87 dBm at 5 MHz)",
    )
    radio.add_argument(
        "--noise-dbm", type=cli.finite_float, default=None, help="noise power in dBm, overriding k*T*B"
    )
    radio.add_argument(
        "--no-threshold",
        dest="threshold",
        action="store_false",
        help="keep every interfering link (no control-channel threshold)",
    )
    radio.add_argument(
        "--snr-required",
        type=cli.finite_float,
        default=d.snr_required,
        help="SNR in dB the control channel needs (threshold)",
    )
    radio.add_argument("--margin", type=cli.finite_float, default=d.margin, help="threshold margin in dB")


def _configure(args: argparse.Namespace) -> PowerAllocationConfig:
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(PowerAllocationConfig)}
    if values["shadowing_std"] == "standard":
        values["shadowing_std"] = pathloss.get_pathloss_model(args.pathloss).shadowing_std_db
    return PowerAllocationConfig(**values)


KIND = cli.DatasetKind(
    name="power-allocation",
    help="channel matrices of N transmitter-receiver pairs (UWMMSE power allocation)",
    description=__doc__.split("\n\n")[0]
    + " Defaults reproduce the paper preset: 25 pairs in a 1 km square, 0.9 GHz, 5 MHz, 5 W, "
    "UMa NLOS-optional, "
    "shadowing 7.2 dB clipped at 2 std, Rayleigh fading, noise -106.87 dBm, threshold 138.86 dB, "
    "100 layouts x 100 batches x 64 samples for training and 100 test batches.",
    add_arguments=_add_arguments,
    configure=_configure,
    generate=generate,
    estimate=estimate,
    reader=PowerAllocationDataset,
)
