"""The config's service sections: `control`, `firmware` and `commissioning`, and their settings.

Part of gateway.config (which owns the rest of the file).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from gateway.settings import CommissioningSettings, ControlSettings, FirmwareSettings
from gateway.yamlschema import Field, ListOf, dataclass_map, resolve_path

_TEMPLATE_FIELDS = ("identity", "connector")


def _url_template(value: str) -> str | None:
    """Only the bare fields {identity} and {connector} (a format spec such as {connector:02d} is fine):
    str.format would also take {identity.upper} or {connector[0]}, and print garbage on a sticker or raise."""
    problem = "is not a URL template with only {identity} and {connector}"
    try:
        for _, name, spec, _ in string.Formatter().parse(value):
            if name is not None and (name not in _TEMPLATE_FIELDS or "{" in (spec or "")):  # a nested {field} in a spec too
                return f"{problem}: {{{name}{':' + spec if spec else ''}}}"
        value.format(identity="CP", connector=1)
    except ValueError as exc:  # unbalanced braces, a format spec that does not fit the value
        return f"{problem}: {exc}"
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
