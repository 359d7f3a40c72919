"""The site's transformations: the payloads this WMS runs, declared by operators; a task names one of them.

A transformation is a name, an executable (an absolute path or a bare name found on the worker's PATH), an
argument template and the parameters a task may fill in, each with the pattern its values must match. The
template may hold the pilot's placeholders ({inputs}, {outdir}, {job_id}, ...; expanded on the worker node) and
``{param:<name>}``, filled in here at submission, so a task can never choose the executable nor add an
argument of its own. Running a raw command instead is a development switch (WMS_ALLOW_ARBITRARY_COMMANDS).

The registry is a JSON file (WMS_TRANSFORMATIONS_FILE; the SPD demo's by default), read at start-up:
    {"images": {"spd-el9": "/cvmfs/spd.jinr.ru/images/el9"},
     "transformations": [{"name": "spd-filter", "executable": "spd-filter", "args": ["{inputs}"],
                          "parameters": {"threshold": {"pattern": "^[0-9]+(\\.[0-9]+)?$", "default": "0.5"}},
                          "resource_type": "cpu", "cores": 1, "memory_mb": 500,
                          "image": "spd-el9", "network": false}]}
A parameter's value may not start with '-' (the program would take it for an option: `run=--help`) unless the
parameter declares ``"option": true``; where the program supports it, a template passes values after ``--``
(``["--run", "{param:run}", "--", "{inputs}"]``) so that even an input named like an option stays an operand.
An image is an unpacked root filesystem, a directory every worker node sees at that path (CVMFS or a shared
filesystem, as HEP sites ship apptainer images); the pilot's sandbox runs the payload with it as ``/``. A task
names an image only through a transformation (or by its registry name, behind the development switch): never a
path. ``network: false`` runs the payload without a network.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from common.policies import ResourceType

PARAM = re.compile(r"\{param:([a-z][a-z0-9_]{0,63})\}")
# A parameter value that matches its declared pattern is still refused if it could leave its place: a path
# segment '..', a placeholder brace, a control character.
UNSAFE_VALUE = re.compile(r"(^|/)\.\.(/|$)|[{}\x00-\x1f\x7f]")
DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "examples" / "spd" / "transformations.json"

ImageName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
ImagePath = Annotated[str, StringConstraints(min_length=2, max_length=1024, pattern=r"^/[^\x00]*$")]
Executable = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^(/[^\x00]+|[A-Za-z0-9_.+-]+)$")]


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(r"^[A-Za-z0-9_.,:=+-]{1,256}$", description="what a value must match (a full match)")
    default: str | None = None
    option: bool = Field(False, description="true: a value may start with '-' (it is meant to be an option of the "
                         "program); otherwise such a value is refused, so '--help' or '-rf' can never become one")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return pattern


class Transformation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    executable: Executable
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(default_factory=list)
    parameters: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")], Parameter] = Field(
        default_factory=dict)
    resource_type: ResourceType = "cpu"
    cores: int = Field(1, ge=1, le=1024)
    memory_mb: int = Field(2000, ge=1, le=2**20)
    image: ImageName | None = Field(None, description="an image of the registry's 'images' to run in")
    network: bool = Field(True, description="false: the payload runs without a network")

    @field_validator("executable")
    @classmethod
    def _no_traversal(cls, executable: str) -> str:
        if ".." in executable.split("/"):
            raise ValueError("an executable path may not contain '..'")
        return executable

    @model_validator(mode="after")
    def _placeholders_declared(self) -> Transformation:
        used = {name for arg in self.args for name in PARAM.findall(arg)}
        if used - set(self.parameters):
            raise ValueError(f"{self.name}: args use undeclared parameters {sorted(used - set(self.parameters))}")
        return self


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: dict[ImageName, ImagePath] = Field(default_factory=dict)
    transformations: list[Transformation]

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        names = [t.name for t in self.transformations]
        if len(names) != len(set(names)):
            raise ValueError("a transformation name is declared twice")
        for t in self.transformations:
            if t.image is not None and t.image not in self.images:
                raise ValueError(f"{t.name}: image {t.image!r} is not declared in 'images'")
        for name, path in self.images.items():
            if ".." in path.split("/"):
                raise ValueError(f"image {name}: a path may not contain '..'")
        return self


class BadParameters(ValueError):
    """The task's parameters do not fit the transformation: unknown, missing or not matching their pattern."""


class Transformations:
    def __init__(self, registry: Registry) -> None:
        self.by_name = {t.name: t for t in registry.transformations}
        self.images = dict(registry.images)

    @classmethod
    def load(cls, path: Path | None) -> Transformations:
        path = path or DEFAULT_REGISTRY
        return cls(Registry.model_validate_json(path.read_text()))

    def get(self, name: str) -> Transformation | None:
        return self.by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self.by_name)


def resolve_args(transformation: Transformation, given: dict[str, str]) -> list[str]:
    """The argument list with every {param:...} filled in; BadParameters says what is wrong."""
    unknown = set(given) - set(transformation.parameters)
    if unknown:
        raise BadParameters(f"{transformation.name} has no parameters {sorted(unknown)} "
                            f"(it takes {sorted(transformation.parameters) or 'none'})")
    values: dict[str, str] = {}
    for name, declared in transformation.parameters.items():
        value = given.get(name, declared.default)
        if value is None:
            raise BadParameters(f"{transformation.name} needs parameter {name!r}")
        if UNSAFE_VALUE.search(value) or not re.fullmatch(declared.pattern, value):
            raise BadParameters(f"parameter {name!r} = {value!r} does not match {declared.pattern} "
                                "(and may hold no '..' segment, brace or control character)")
        if value.startswith("-") and not declared.option:
            raise BadParameters(f"parameter {name!r} = {value!r} starts with '-': the program would read it as an "
                                "option (a parameter that is one says \"option\": true in the registry)")
        values[name] = value
    return [PARAM.sub(lambda m: values[m.group(1)], arg) for arg in transformation.args]
