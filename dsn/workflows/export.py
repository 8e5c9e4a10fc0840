"""``dsn export``: a model's networks as an ONNX or TorchScript file, for runtimes without the training stack.

The file holds one graph with the model's streaming interface, in eval mode, and the model's spec (JSON; ONNX:
metadata ``dsn_model``, TorchScript: extra file ``dsn_model.json``), so the preprocessing the network needs
(channels, sampling rate, normalisation, class names) travels with it:

- an ``epoch`` model (pretraining stage: CNN + softmax head): ``epochs (n_epochs, n_chans, n_times) -> proba
  (n_epochs, n_classes)``;
- a ``sequence`` model (CNN + BiLSTM + shortcut): one chunk of a night and the LSTM state carried from the
  previous chunk, ``epochs (n_epochs, n_chans, n_times), h, c -> proba (n_epochs, n_classes), h_out, c_out``,
  each state ``(2 * n_layers, 1, hidden_size)`` (the official bidirectional mode: the forward stack's layers
  first, then the backward stack's; zeros start a night). Feeding a night's chunks of ``seq_len`` epochs in
  order, each with the state the previous one returned, is ``dsn predict``'s streaming with
  ``n_offsets: 1`` (chunk-offset averaging repeats it with shifted chunks; see
  :meth:`dsn.models.scoring.SleepScorer.predict_proba`);
- another sequence network (:mod:`dsn.models.networks`): with ``finetune.net.class_path: lstm`` as above, each
  state ``(n_layers, 1, hidden_size)``; with ``transformer`` or ``none`` (no state) ``epochs -> proba`` of one
  chunk (feed a night in chunks of ``seq_len`` epochs). A network that does not trace (an external module's
  own code) is refused in one line.

The input is the epochs as the network reads them: in µV for a model trained on raw signals, normalised
per recording (:func:`dsn.data.normalize.normalize`) for the others. To score a whole night of a normalised
model as ``dsn predict`` does (:func:`dsn.workflows.predict.scaled_proba`): stream the night normalised by its
own statistics once, take the sleep period of that hypnogram plus ``trim_minutes``
(:func:`dsn.data.normalize.sleep_window`), stream that period normalised by its own statistics (each chunk
offset from zeros), and keep the first streaming's probabilities outside it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dsn.errors import ConfigError, DsnError, ModelError

FORMATS = ("onnx", "torchscript")
#: File name extensions that say a format (``--format`` inferred from them, a mismatch refused).
EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
              ".torchscript": "torchscript"}


def resolve_format(fmt: str | None, out: str | Path) -> str:
    """The format to write ``out`` in: ``fmt`` when given, else the one its extension names (``.onnx``;
    ``.pt``, ``.pth``, ``.ts``, ``.torchscript``), else ONNX.

    Raises
    ------
    ConfigError
        For an unknown format, or an extension that names the other format (a TorchScript file called
        ``m.onnx`` would be read as ONNX, and fail, by whoever gets it).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}.")
    ext = Path(out).suffix.lower()
    implied = EXTENSIONS.get(ext)
    if fmt is None:
        return implied or "onnx"
    if implied is not None and implied != fmt:
        right = next(e for e, f in EXTENSIONS.items() if f == fmt)
        raise ConfigError(f"--out {out}: a {ext} file is {implied}, not {fmt}; name it "
                          f"{Path(out).with_suffix(right).name} or give --format {implied}.")
    return fmt


def _pad_fixed(module, n_in: int):
    """A copy-free stand-in for a TensorFlow-"SAME" conv/pool whose input length is known (traceable)."""
    import torch.nn.functional as F
    from torch import nn

    from dsn.models.deepsleepnet import Conv1dSame, MaxPool1dSame, same_padding

    if isinstance(module, Conv1dSame):
        pad = same_padding(n_in, module.kernel_size[0], module.stride[0])

        class _Conv(nn.Module):
            def __init__(self, conv):
                super().__init__()
                self.conv = conv

            def forward(self, x):
                return nn.Conv1d.forward(self.conv, F.pad(x, pad))

        return _Conv(module)
    assert isinstance(module, MaxPool1dSame)
    pad = same_padding(n_in, module.kernel_size, module.stride)
    k, s = module.kernel_size, module.stride

    class _Pool(nn.Module):
        def forward(self, x):
            return F.max_pool1d(F.pad(x, pad, value=float("-inf")), k, s)

    return _Pool()


def traceable_feature_net(feature_net):
    """A deep copy of ``feature_net`` whose "SAME" padding is fixed for its ``n_times`` (tracing reads
    shapes as tensors, which the length-generic padding does not take); same outputs."""
    import copy

    import torch

    from dsn.models.deepsleepnet import Conv1dSame, MaxPool1dSame

    net = copy.deepcopy(feature_net).eval()
    lengths: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: lengths.__setitem__(name, int(args[0].shape[-1])))
             for name, m in net.named_modules() if isinstance(m, (Conv1dSame, MaxPool1dSame))]
    with torch.no_grad():
        net(torch.zeros(1, net.n_chans, net.n_times))
    for h in hooks:
        h.remove()
    for name, n_in in lengths.items():
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, _pad_fixed(getattr(parent, attr), n_in))
    net.check_input = lambda x: None  # shape checks compare tensors while tracing; the export fixes the shapes
    return net


def streaming_module(scorer):
    """The scorer's networks as one traceable ``nn.Module`` with the interface in the module doc."""
    import copy

    import torch
    from torch import nn

    net = copy.deepcopy(scorer.net).eval()
    net.feature_net = traceable_feature_net(scorer.feature_net)
    if scorer.kind == "epoch":

        class EpochScorer(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, epochs):
                return torch.softmax(self.net(epochs), -1)

        return EpochScorer().eval()
    if _stateless(scorer):  # another sequence model without state (transformer, none): one chunk in, one out

        class ChunkScorer(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, epochs):
                return torch.softmax(self.net(epochs[None])[0], -1)

        return ChunkScorer().eval()
    n = net.n_layers if hasattr(net, "bidirectional_mode") else 0  # 0: an (h, c) state as it is (lstm)
    official = getattr(net, "bidirectional_mode", None) == "official"

    class SequenceScorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, epochs, h, c):
            state = (h[:n], c[:n], h[n:], c[n:]) if official else (h, c)
            logits, new = self.net(epochs[None], state, return_state=True)
            proba = torch.softmax(logits[0], -1)
            if official:
                return proba, torch.cat([new[0], new[2]]), torch.cat([new[1], new[3]])
            return proba, new[0], new[1]

    return SequenceScorer().eval()


def _stateless(scorer) -> bool:
    """Whether the exported module takes epochs alone (an epoch model, or a sequence model without state:
    ``transformer`` and ``none`` score each chunk given on its own)."""
    seq = getattr(scorer.net, "sequence_net", None)
    return scorer.kind == "epoch" or (seq is not None and not seq.stateful)


def zero_state(scorer):
    """``(h, c)`` zeros that start a night for an exported sequence model (numpy float32)."""
    import numpy as np

    seq = getattr(scorer.net, "sequence_net", None)
    if seq is not None:  # dsn.models.LstmSequenceNet: (n_layers, 1, hidden)
        shape = (seq.n_layers, 1, seq.hidden_size)
    else:
        shape = (2 * scorer.net.n_layers, 1, scorer.net.hidden_size)
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


@contextlib.contextmanager
def _no_attention_fastpath():
    """torch's fused inference kernel of ``nn.TransformerEncoder`` off while tracing (ONNX has no such operator;
    the unfused layers compute the same)."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def export(scorer, fmt: Literal["onnx", "torchscript"], out: str | Path) -> Path:
    """Write ``scorer``'s networks to ``out`` as ``fmt`` (see the module doc); returns the path.

    The file is written under a temporary name and renamed, so a failed export leaves nothing behind.

    Raises
    ------
    ConfigError
        For an unknown format.
    """
    import warnings

    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = streaming_module(scorer)
    fn = scorer.feature_net
    epochs = torch.zeros(max(2, min(scorer.seq_len, 4)), fn.n_chans, fn.n_times)
    kind = "epoch" if _stateless(scorer) else "sequence"
    args = (epochs,) if kind == "epoch" else (epochs, *map(torch.from_numpy, zero_state(scorer)))
    spec = json.dumps(scorer.spec(), default=str)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad(), _no_attention_fastpath():
            warnings.simplefilter("ignore")  # tracer and exporter notes on the fixed shapes
            if fmt == "torchscript":
                traced = torch.jit.trace(module, args, check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={"dsn_model.json": spec})
            else:
                _export_onnx(module, args, tmp, kind, spec)
        tmp.replace(out)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        if isinstance(e, DsnError):
            raise
        what = getattr(scorer.feature_net, "class_path", type(scorer.feature_net).__name__)
        seq_net = getattr(scorer.net, "sequence_net", scorer.net)
        seq = getattr(seq_net, "class_path", type(seq_net).__name__)  # a wrapped network (USleep): its own name
        raise ModelError(f"{what} + {seq} cannot be exported as {fmt} ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0][:200]}); score with `dsn predict` or the MLflow model "
                         "instead.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _export_onnx(module, args, path: Path, kind: str, spec: str) -> None:
    import onnx
    import torch

    names_in = ["epochs"] if kind == "epoch" else ["epochs", "h", "c"]
    names_out = ["proba"] if kind == "epoch" else ["proba", "h_out", "c_out"]
    torch.onnx.export(module, args, str(path), dynamo=False, input_names=names_in, output_names=names_out,
                      dynamic_axes={"epochs": {0: "n_epochs"}, "proba": {0: "n_epochs"}}, opset_version=17)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "dsn_model", spec
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------- the `dsn export` command
@dataclass
class ExportResult:
    """The file written, its format and the model reference it came from."""

    path: Path
    format: str
    ref: str


def build_parser():
    from dsn.workflows.cli_args import REF_HELP, command_parser, tracking_options

    p = command_parser("export")
    p.add_argument("ref", type=str, help=REF_HELP)
    p.add_argument("--format", type=Literal["onnx", "torchscript"] | None, default=None,
                   help="File format (null: from --out's extension, .onnx or .pt/.pth/.ts; onnx for any other).")
    p.add_argument("--out", type=str, required=True, help="File to write (e.g. model.onnx, model.pt).")
    tracking_options(p, experiment_help="none needed")
    return p


def parse(argv):
    from dsn.workflows.cli_args import parse_command

    return parse_command(build_parser(), argv)


def run(a) -> ExportResult:
    """``dsn export``: the format resolved and the output file checked before the model is loaded."""
    from dsn import tracking
    from dsn.workflows.cli_args import check_out_file, is_remote
    from dsn.workflows.registry import load_scorer

    fmt = resolve_format(a.format, a.out)
    check_out_file(a.out, example="model.onnx" if fmt == "onnx" else "model.pt")
    uri = tracking.reading_uri(a.tracking_uri, a.tracking_home) if is_remote(a.ref) else None
    return ExportResult(export(load_scorer(a.ref, uri), fmt, a.out), fmt, a.ref)


def render(r: ExportResult) -> str:
    return f"wrote {r.path} ({r.format}, {r.path.stat().st_size / 1e6:.2f} MB) from {r.ref}"
