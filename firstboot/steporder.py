"""The order of firstboot's steps: the one list of step names (ARCHITECTURE.md, firstboot steps).

Standard library only, outside the `firstboot.steps` package: the CLI's parser needs the names for
`--only` without importing the steps (and with them pydantic), so `firstboot status` starts lean.
"""

ORDER: tuple[str, ...] = (
    "metadata",
    "hostname",
    "dns",
    "time",
    "proxy",
    "connectivity",
    "resources",
    "k3s",
    "arc",
    "flux",
)
