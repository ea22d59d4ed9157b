"""The config's service sections: `control`, `firmware` and `commissioning`, and their settings.

Part of gateway.config (which owns the rest of the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.settings import CommissioningSettings, ControlSettings, FirmwareSettings
from gateway.yamlschema import Field, ListOf, dataclass_map, resolve_path


def _url_template(value: str) -> str | None:
    try:
        value.format(identity="CP", connector=1)
    except (KeyError, IndexError, ValueError) as exc:
        return f"is not a URL template with only {{identity}} and {{connector}}: {exc}"
    return None


CONTROL = Field(dataclass_map(ControlSettings, {"socket": Field(str, min=1)}))

FIRMWARE = Field(
    dataclass_map(
        FirmwareSettings,
        {
            "install_command": Field(ListOf(Field(str, min=1))),
            "install_timeout_s": Field(float, above=0),
            "download_timeout_s": Field(float, above=0),
            "retry_interval_s": Field(float, min=0),
            "diagnostics_log_lines": Field(int, min=0),
        },
    )
)

COMMISSIONING = Field(
    dataclass_map(
        CommissioningSettings,
        {
            "site_name": Field(str, min=1),
            "site_address": Field(str, min=1),
            "operator": Field(str, min=1),
            "qr_url_template": Field(str, min=1, check=_url_template),
        },
    )
)


def build(data: dict[str, Any], base: Path) -> tuple[ControlSettings, FirmwareSettings, CommissioningSettings]:
    control, firmware = data["control"], data["firmware"]
    return (
        ControlSettings(socket=resolve_path(base, str(control["socket"]))),
        FirmwareSettings(**(firmware | {"install_command": tuple(firmware["install_command"])})),
        CommissioningSettings(**data["commissioning"]),
    )
