"""``dsn synth``: write a synthetic data set (:mod:`dsn.data.synth`, :mod:`dsn.data.synth_layouts`) as a command:
its parser, :func:`run` and :func:`render`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dsn.errors import ConfigError
from dsn.workflows.cli_args import check_out_folder, command_parser, parse_command


@dataclass
class SynthResult:
    """What ``dsn synth`` wrote: how many recordings, where, in which layout, and the site shift (None: the
    generator's own site)."""

    n_recordings: int
    out_dir: str
    layout: str
    site_name: str
    site: Any = None


def build_parser():
    p = command_parser("synth")
    p.add_argument("out_dir", type=str, help="Folder to write SC4ssNE0-PSG.edf / SC4ssNEX-Hypnogram.edf pairs into.")
    p.add_argument("--subjects", type=int, default=4, help="Number of subjects (at most 100).")
    p.add_argument("--nights", type=Literal[1, 2], default=1, help="Nights per subject.")
    p.add_argument("--hours", type=float, default=8.0, help="Recording length in hours.")
    p.add_argument("--seed", type=int, default=0, help="Random seed.")
    p.add_argument("--sfreq", type=float, default=100.0, help="EEG/EOG sampling rate in Hz (sleep-edf layout).")
    p.add_argument("--layout", type=Literal["sleep-edf", "nsrr", "bids", "generic"], default="sleep-edf",
                   help="File layout, channel names and rates, hypnogram format of a data-set profile.")
    p.add_argument("--site", type=Literal["A", "B"], default="A",
                   help="Recording site: A (the generator's) or B (a second lab: 0.6 x amplitude, 3 uV noise, 5 uV of "
                        "60-Hz mains, a central EEG C4-A1 channel), for adapting a model to a new site (dsn fit --init).")
    p.add_argument("--site_gain", type=float | None, default=None, help="Amplitude factor of the EEG/EOG (null: the site's).")
    p.add_argument("--site_noise", type=float | None, default=None, help="White amplifier noise, uV RMS (null: the site's).")
    p.add_argument("--site_mains", type=float | None, default=None, help="Mains interference, uV (null: the site's).")
    p.add_argument("--site_mains_freq", type=float | None, default=None, help="Mains frequency, Hz (null: the site's).")
    p.add_argument("--site_channel", type=str | None, default=None,
                   help="Label of the first EEG channel instead of 'EEG Fpz-Cz' (null: the site's).")
    p.add_argument("--site_mix", type=float | None, default=None,
                   help="Fraction of Pz-Oz in that channel, another derivation (null: the site's).")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return parse_command(build_parser(), argv)


def run(a) -> SynthResult:
    """Write the data set (the output folder checked first)."""
    check_out_folder(a.out_dir, "OUT_DIR")
    site = site_of(a)
    if a.layout != "sleep-edf":
        if site is not None:
            raise ConfigError(f"--site {a.site} / --site_*: a new site is written in the sleep-edf layout only "
                              f"(drop --layout {a.layout}).")
        from dsn.data.synth_layouts import write_layout

        pairs = write_layout(a.out_dir, a.layout, subjects=a.subjects, nights=a.nights, hours=a.hours, seed=a.seed)
        return SynthResult(len(pairs), a.out_dir, a.layout, a.site)
    from dsn.data.synth import write_dataset

    pairs = write_dataset(a.out_dir, subjects=a.subjects, nights=a.nights, hours=a.hours, seed=a.seed, sfreq=a.sfreq,
                          site=site)
    return SynthResult(len(pairs), a.out_dir, a.layout, a.site, site)


def site_of(a):
    """The :class:`~dsn.data.synth.SiteShift` of ``dsn synth``'s site options; None for the generator's own site."""
    from dsn.data.synth import SiteShift, site_shift

    try:
        site = site_shift(a.site, gain=a.site_gain, noise=a.site_noise, mains=a.site_mains, mains_freq=a.site_mains_freq,
                          channel=a.site_channel, mix=a.site_mix)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return None if site == SiteShift() else site


def render(r: SynthResult) -> str:
    if r.layout != "sleep-edf":
        return f"wrote {r.n_recordings} recordings in the {r.layout} layout to {r.out_dir} (read with --data.dataset {r.layout})"
    lines = [f"wrote {r.n_recordings} recordings ({2 * r.n_recordings} EDF files) to {r.out_dir}"
             + (f" as site {r.site_name} ({r.site.describe()})" if r.site is not None else "")]
    if r.site is not None and r.site.channel:
        lines.append(f"  (the EEG channel is {r.site.channel!r}: for a model's EEG Fpz-Cz give "
                     f"--data.channel_aliases '{{EEG Fpz-Cz: [{r.site.channel}]}}')")
    return "\n".join(lines)
