"""Parsers of single --ppd-* option values and of the API key: each raises ConfigError with one line
naming the option and what it accepts (config.build_config puts them together)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_ppd.errors import ConfigError

BACKENDS = ("virtual", "sim", "sglang", "external", "replay")
PATHS = ("local", "remote")


def parse_backend(text: str) -> str:
    if text not in BACKENDS:
        raise ConfigError(f"--ppd-backend: '{text}' is not a backend; valid: {', '.join(BACKENDS)}")
    return text


def _positive(option: str, kind: type, low: float) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{option}: '{text}' is not a number; give a {kind.__name__} >= {low}") from None
        if value < low or (kind is float and value <= 0):
            raise ConfigError(f"{option}: {value} is out of range; give a {kind.__name__} "
                              f"{'> 0' if kind is float else f'>= {low}'}")
        return value
    return parse


parse_reps = _positive("--ppd-reps", int, 1)
parse_max_reps = _positive("--ppd-max-reps", int, 1)
parse_ci = _positive("--ppd-ci", float, 0)
parse_timeout = _positive("--ppd-timeout", float, 0)


def parse_url(text: str, option: str = "--ppd-url") -> str:
    """http(s) only, with a host, no credentials, no query."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{option}: '{text}' must start with http:// or https://")
    if not parts.hostname:
        raise ConfigError(f"{option}: '{text}' has no host; e.g. http://127.0.0.1:30000")
    if parts.username or parts.password:
        raise ConfigError(f"{option}: credentials in the URL are refused; put the key in PPD_API_KEY")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{option}: '{text}' has a port out of range; use 1-65535") from None
    if port == 0:
        raise ConfigError(f"{option}: '{text}' has a port out of range; use 1-65535")
    if parts.query or parts.fragment:
        raise ConfigError(f"{option}: '{text}' must be a base URL without query or fragment")
    return text.strip().rstrip("/")


def parse_urls(text: str) -> dict[str, str]:
    """`URL` (the remote path) or `local=URL,remote=URL`."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and part.split("=", 1)[0] in PATHS:
            path, url = part.split("=", 1)
        elif "=" in part and not part.startswith("http"):
            raise ConfigError(f"--ppd-url: '{part}' names no path; use URL or local=URL,remote=URL")
        else:
            path, url = "remote", part
        if path in out:
            raise ConfigError(f"--ppd-url: path {path} given twice; use local=URL,remote=URL")
        out[path] = parse_url(url)
    if not out:
        raise ConfigError("--ppd-url: empty; use URL or local=URL,remote=URL")
    return out


def parse_sim_args(text: str) -> tuple[str, ...]:
    """Extra flags for the sim engines; only --sim-* flags, so the SGLang command line stays exact."""
    import shlex

    try:
        args = tuple(shlex.split(text))
    except ValueError as exc:
        raise ConfigError(f"--ppd-sim-args: {exc}; quote it like '--sim-fault=crash@5'") from None
    bad = [a for a in args if a.startswith("-") and not a.startswith("--sim-")]
    if bad:
        raise ConfigError(f"--ppd-sim-args: '{bad[0]}' is not a --sim-* flag; only --sim-* flags go here")
    return args


def parse_results(text: str) -> Path:
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise ConfigError(f"--ppd-results: '{text}' contains '..'; give a plain directory path")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--ppd-results: {text} is a file; give a directory")
    return path


def api_key_from_env() -> str | None:
    """PPD_API_KEY, or the content of the file named by PPD_API_KEY_FILE."""
    key = os.environ.get("PPD_API_KEY")
    if key:
        return key.strip()
    path = os.environ.get("PPD_API_KEY_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"PPD_API_KEY_FILE={path} cannot be read ({exc.strerror}); point it at a readable file") from None
    return None
