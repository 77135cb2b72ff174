"""Where snapctl finds the service: flags, then SNAPCTL_URL/SNAPCTL_TOKEN, then a file.

The file is TOML (``~/.config/snapctl/config.toml``, or ``$XDG_CONFIG_HOME/snapctl/...``,
or the path in ``SNAPCTL_CONFIG``)::

    url = "http://127.0.0.1:8000"
    token = "snp_..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """No usable URL or token; the message says where snapctl looked."""


@dataclass(frozen=True)
class Config:
    url: str
    token: str

    @property
    def api_base(self) -> str:
        """The /api/v1 base, whether the user gave the host or the API's own URL."""
        base = self.url.rstrip("/")
        return base if base.endswith("/api/v1") else base + "/api/v1"


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("SNAPCTL_CONFIG"):
        return Path(env["SNAPCTL_CONFIG"]).expanduser()
    root = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return root / "snapctl" / "config.toml"


def _from_file(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return {k: v for k, v in data.items() if k in ("url", "token") and isinstance(v, str)}


def load(url: str | None = None, token: str | None = None,
         env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    needs_file = not (url or env.get("SNAPCTL_URL")) or not (token or env.get("SNAPCTL_TOKEN"))
    file = _from_file(path) if needs_file else {}
    final_url = url or env.get("SNAPCTL_URL") or file.get("url")
    final_token = token or env.get("SNAPCTL_TOKEN") or file.get("token")
    if not final_url:
        raise ConfigError(f"no service URL: pass --url, set SNAPCTL_URL or put url in {path}")
    if not final_url.startswith(("http://", "https://")):
        raise ConfigError(f"the service URL must start with http:// or https://: {final_url!r}")
    if not final_token:
        raise ConfigError(f"no token: pass --token, set SNAPCTL_TOKEN or put token in {path}")
    return Config(url=final_url, token=final_token)
