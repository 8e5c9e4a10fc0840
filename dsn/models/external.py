"""Epoch encoders from other packages: braindecode's sleep stagers and a user's own ``nn.Module``.

:class:`ExternalEncoder` imports a class by its dotted path only when it is built (``import braindecode.models``
takes seconds), constructs it with braindecode's signature (``n_chans, n_times, sfreq, n_outputs`` and the
user's ``init_args``) and exposes it as an epoch encoder ``(batch, n_chans, n_times) -> (batch, n_features)``:
through ``return_feats=True`` where the class has that argument (braindecode's ``SleepStagerChambon2018``,
``SleepStagerBlanco2020``, ``DeepSleepNet``, ``AttnSleep``), as its class scores otherwise. ``n_features`` is
found by one forward pass of zeros at construction.

Every failure is one :class:`~dsn.errors.ModelError` line naming the class and the fix: a package that is not
installed (with the ``pip install`` line), a class that is not there, a constructor argument the class does not
take, ``AttnSleep`` with more than one channel (its first convolution has one input channel), ``USleep`` (a
whole-sequence network, not an epoch encoder), an output that is not ``(batch, n_features)``.

Implementation Differences
--------------------------
1. **Features, not the package's head.** With ``return_feats=True`` the package's own classifier layer is built
   but unused (its parameters stay in the state dict, without gradients); dsn's systems put their own head or
   sequence model on the features.
2. **braindecode's DeepSleepNet** is not dsn's: its feature path ends in its own BiLSTM and it applies each
   filter to every channel separately (see :mod:`dsn.models.deepsleepnet`, Implementation Differences 12).
3. **DeepFeatureNet-specific options** (``l2_layers``, the official TF "SAME" padding, ``bn_momentum``) are not
   translated: :meth:`ExternalEncoder.first_conv_weights` delegates to the wrapped module where it has that
   method and otherwise accepts only ``"none"``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from dsn.errors import ModelError

__all__ = ["BRAINDECODE_VERSION", "ExternalEncoder", "install_hint", "make_encoder", "resolve_class"]

#: The braindecode release dsn is tested with.
BRAINDECODE_VERSION = "1.8.1"
#: Networks that map a window of consecutive epochs to one score per epoch: not epoch encoders.
WHOLE_SEQUENCE = {"USleep": "braindecode's USleep (Perslev et al. 2021)"}
#: Networks whose first layer takes one channel.
ONE_CHANNEL = {"AttnSleep"}


def install_hint(package: str) -> str:
    """The ``pip install`` line for a missing top-level package (braindecode pinned to the tested release)."""
    return f"pip install braindecode=={BRAINDECODE_VERSION}" if package == "braindecode" else f"pip install {package}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def resolve_class(class_path: str) -> type[nn.Module]:
    """Import ``class_path`` (``package.module.Class``; a bare name means ``braindecode.models.NAME``).

    Raises
    ------
    ModelError
        When the module cannot be imported (naming the ``pip install`` line), has no such class, or the class is
        not an ``nn.Module``.
    """
    if not isinstance(class_path, str) or not class_path.strip("."):
        raise ModelError(
            f"class_path must be a dotted name such as braindecode.models.SleepStagerChambon2018, got {class_path!r}"
        )
    if "." not in class_path:
        class_path = f"braindecode.models.{class_path}"
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = (e.name or module_name).split(".")[0]
        raise ModelError(
            f"{class_path}: cannot import {module_name} ({_first_line(e)}); install it ({install_hint(top)}) "
            "or fix the class_path"
        ) from None
    except OSError as e:  # a compiled extension that does not load (braindecode's torchaudio, stack notes)
        raise ModelError(
            f"{class_path}: importing {module_name} failed ({_first_line(e)}); a compiled library in this environment "
            "does not match its torch: for torchaudio, delete the .so files in torchaudio/lib (it then runs as pure "
            "Python) or reinstall with the project's install path"
        ) from None
    except ImportError as e:
        raise ModelError(
            f"{class_path}: cannot import {module_name} ({_first_line(e)}); fix its installation"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelError(f"{class_path}: {module_name} has no {name!r}; check the spelling and the package version")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"{class_path} is not a torch.nn.Module subclass (it is {type(cls).__name__})")
    return cls


def _constructor_args(cls: type, class_path: str, linked: dict[str, Any], init_args: dict[str, Any]) -> dict:
    """The keyword arguments for ``cls``: the linked ones it takes, ``return_feats=True`` if it has it, init_args."""
    params = inspect.signature(cls).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in ("n_chans", "n_times"):
        if key not in params and not var_kw:
            raise ModelError(
                f"{class_path} has no constructor argument {key!r}: an epoch encoder takes braindecode's signature "
                "(n_chans, n_times, sfreq, n_outputs), at least n_chans and n_times"
            )
    for key in init_args:
        if key not in params and not var_kw:
            raise ModelError(
                f"{class_path} has no constructor argument {key!r} (init_args.{key}); remove it or fix its name"
            )
    kwargs = {k: v for k, v in linked.items() if k in params or var_kw}
    if "return_feats" in params and "return_feats" not in init_args:
        kwargs["return_feats"] = True
    kwargs.update(init_args)
    missing = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and n not in kwargs
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]  # fmt: skip
    if missing:
        raise ModelError(f"{class_path} needs constructor argument {missing[0]!r}; give it in init_args")
    return kwargs


def _package_of(cls: type) -> tuple[str, str | None]:
    """The distribution that provides ``cls`` and its installed version (``None`` when not installed as one)."""
    top = cls.__module__.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top) or [top]
    try:
        return dists[0], importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        return dists[0], None


class ExternalEncoder(nn.Module):
    """An epoch encoder built from a class path: braindecode's sleep stagers or a user's ``nn.Module``.

    Parameters
    ----------
    class_path : str
        ``package.module.Class``, e.g. ``braindecode.models.SleepStagerChambon2018`` or ``mypkg.nets.MyNet``; a bare
        name means ``braindecode.models.NAME``. Imported here, not before.
    n_chans : int
        Input channels (linked from ``data.channels``).
    n_times : int
        Samples per epoch (linked from the epoch length and ``data.sfreq``).
    sfreq : float
        Sampling rate in Hz (passed where the class takes it).
    n_outputs : int, default 5
        Number of classes (passed where the class takes it).
    **init_args
        Other constructor arguments of the class (``drop_prob``, ...). ``return_feats`` defaults to ``True`` where
        the class has it.

    Attributes
    ----------
    module : nn.Module
        The wrapped network.
    n_features : int
        Size of its output per epoch, found by a forward pass of zeros.
    returns : {"features", "scores"}
        ``"features"`` when built with ``return_feats=True``, ``"scores"`` otherwise (its class scores).
    class_path, init_args, package, package_version
        What the artifact spec records to rebuild it (``package_version`` is ``None`` for a module that is not
        part of an installed distribution).

    Raises
    ------
    ModelError
        One line naming the class and the fix (see the module docstring).

    Notes
    -----
    Shapes: ``forward`` maps ``(batch, n_chans, n_times) -> (batch, n_features)`` (trailing dimensions of the
    wrapped module's output are flattened).
    """

    def __init__(
        self, class_path: str, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 5, **init_args: Any
    ) -> None:
        super().__init__()
        cls = resolve_class(class_path)
        name = cls.__name__
        if name in WHOLE_SEQUENCE:
            raise ModelError(
                f"{class_path}: {WHOLE_SEQUENCE[name]} is a whole-sequence network (a window of consecutive epochs to "
                "one score per epoch), not an epoch encoder: give it as finetune.net.class_path with net.class_path: "
                "RawEpochs and stages: [finetune] (conf/models/usleep.yaml)"
            )
        if name in ONE_CHANNEL and n_chans != 1:
            raise ModelError(
                f"{class_path}: {name} takes one channel (its first convolution has one input channel), got "
                f"n_chans={n_chans}: give one channel, e.g. --data.channels '[EEG Fpz-Cz]'"
            )
        linked = {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq, "n_outputs": n_outputs}
        kwargs = _constructor_args(cls, class_path, linked, dict(init_args))
        try:
            self.module = cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - any constructor failure becomes one line naming the class
            raise ModelError(
                f"{class_path}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {_first_line(e)}"
            ) from None
        self.class_path = f"{cls.__module__}.{cls.__qualname__}"
        self.init_args = dict(init_args)
        self.n_chans, self.n_times, self.sfreq, self.n_outputs = n_chans, n_times, float(sfreq), n_outputs
        self.returns = "features" if kwargs.get("return_feats") else "scores"
        self.package, self.package_version = _package_of(cls)
        self.n_features: int = self._dry_run()

    def _dry_run(self) -> int:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = self.module(torch.zeros(2, self.n_chans, self.n_times))
        except Exception as e:  # noqa: BLE001 - the module's own error, as one line
            raise ModelError(
                f"{self.class_path} fails on an input of shape (2, n_chans={self.n_chans}, n_times={self.n_times}): "
                f"{_first_line(e)}; check n_chans, the epoch length and init_args"
            ) from None
        finally:
            self.module.train(was_training)
        if not isinstance(out, Tensor) or out.ndim < 2 or out.shape[0] != 2:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(
                f"{self.class_path} returns {got} for an input of shape (2, {self.n_chans}, {self.n_times}); an epoch "
                "encoder returns (batch, n_features)"
            )
        return int(out[0].numel())

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`~dsn.errors.ModelError` unless ``x`` has shape ``(batch, n_chans, n_times)``."""
        if x.ndim != 3 or x.shape[1] != self.n_chans or x.shape[2] != self.n_times:
            raise ModelError(
                f"{self.class_path} was built for (batch, n_chans={self.n_chans}, n_times={self.n_times}), got shape "
                f"{tuple(x.shape)}; check the channels and the epoch length"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Features (or class scores) ``(batch, n_features)`` of raw epochs ``(batch, n_chans, n_times)``."""
        self.check_input(x)
        return self.module(x).flatten(1)

    def first_conv_weights(self, which: str = "none") -> list[nn.Parameter]:
        """The wrapped module's ``first_conv_weights(which)`` where it has one; otherwise ``[]`` for ``"none"``.

        Raises
        ------
        ModelError
            For ``"small"`` / ``"both"`` on a module without DeepFeatureNet's first convs.
        """
        own = getattr(self.module, "first_conv_weights", None)
        if callable(own):
            return own(which)
        if which == "none":
            return []
        raise ModelError(
            f"l2_layers={which!r} names DeepFeatureNet's first convs, which {self.class_path} does not have; "
            "set l2_layers: none"
        )

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return ", ".join(f"{k}={getattr(self, k, '?')}" for k in ("class_path", "returns", "n_features"))


def make_encoder(
    class_path: str, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 5, **init_args: Any
) -> ExternalEncoder:
    """Build an :class:`ExternalEncoder` (see there); the function form of the same call."""
    return ExternalEncoder(class_path, n_chans, n_times, sfreq, n_outputs, **init_args)
