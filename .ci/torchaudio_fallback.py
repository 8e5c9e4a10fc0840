"""Make `import braindecode` work beside a torch that PyPI's torchaudio was not built for (make venv runs this).

braindecode 1.8.1 pulls in torchaudio (2.11.1 on PyPI), whose compiled libraries are a CUDA build of another
torch: with dsn's torch 2.13.0 `import torchaudio.functional` (and so `import braindecode`) fails with an
OSError on `_torchaudio.so` / `libc10_cuda.so`. No torchaudio release matches torch 2.13, and without its
compiled libraries torchaudio runs as pure Python, which is all braindecode's sleep networks use. This script
removes `torchaudio/lib/*.so` only when importing torchaudio fails on them; otherwise it changes nothing.
Usage: python .ci/torchaudio_fallback.py   (with the environment's python)
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys


def _imports() -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", "import torchaudio.functional"], capture_output=True, text=True)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def main() -> int:
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None:
        print("torchaudio is not installed: nothing to do")
        return 0
    ok, err = _imports()
    if ok:
        print("torchaudio imports: nothing to do")
        return 0
    libs = sorted((pathlib.Path(spec.origin).parent / "lib").glob("*.so"))
    if "OSError" not in err or not libs:
        print(f"torchaudio fails to import for another reason: {err}", file=sys.stderr)
        return 1
    for so in libs:
        so.unlink()
    ok, err = _imports()
    print(f"removed {len(libs)} compiled torchaudio libraries that do not load with this torch "
          f"({', '.join(p.name for p in libs)}); torchaudio now runs as pure Python" if ok else err)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
