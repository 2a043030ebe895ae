"""Notification templates: one JSON file per type, rendered with Jinja2 as plain text.

The file format is described in ``templates/README.md``. Every template declares
its variables; using an undeclared one is a load-time ``TemplateDefinitionError``,
and rendering without a declared one is a ``TemplateVariableError`` (fatal: the
event is dead-lettered, never half-rendered).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined, Template, TemplateError, meta

from schemas import NotificationAction, NotificationType
from schemas.errors import ConfigurationError, FatalHandlerError

__all__ = [
    "TEMPLATES_DIR",
    "NotificationTemplate",
    "RenderedContent",
    "TemplateDefinitionError",
    "TemplateSet",
    "TemplateVariableError",
    "format_session_date",
    "load_template",
    "load_templates",
    "snake_case_keys",
]

TEMPLATES_DIR = Path(__file__).with_name("templates")
"""The built-in templates: ``<notification type>.json``."""

_KEYS = {"variables", "defaults", "title", "body", "icon", "actions"}
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")

# Plain text, never HTML: autoescape would turn "O'Brien" into "O&#39;Brien".
_ENV = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)  # noqa: S701


class TemplateDefinitionError(ConfigurationError):
    """A template file that cannot work: bad JSON, unknown keys, Jinja2 syntax, undeclared variables."""

    def __init__(self, template: str, problem: str) -> None:
        self.template = template
        super().__init__(f"notification template {template}: {problem}")


class TemplateVariableError(FatalHandlerError):
    """A render lacked declared variables; the event is dead-lettered and nothing is stored.

    Example: ``TemplateVariableError("session_confirmed", ["coach_name"]).missing == ["coach_name"]``
    """

    def __init__(self, template: str, missing: Sequence[str], detail: str = "") -> None:
        self.template = template
        self.missing = sorted(missing)
        what = f"missing variables {', '.join(self.missing)}" if self.missing else "cannot be rendered"
        super().__init__(f"notification template {template}: {what}{f' ({detail})' if detail else ''}")


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """What a user sees: title, body, icon and buttons."""

    title: str
    body: str
    icon: str | None
    actions: tuple[NotificationAction, ...]


@dataclass(frozen=True)
class NotificationTemplate:
    """One parsed template file. Example: ``load_template(path).render({"coach_name": "Ada", ...})``"""

    name: str
    variables: frozenset[str]
    defaults: Mapping[str, str]
    title: Template
    body: Template
    icon: str | None
    actions: tuple[tuple[str, Template], ...]

    def render(self, values: Mapping[str, str]) -> RenderedContent:
        """Render with ``values`` (extra keys are ignored); ``TemplateVariableError`` when a declared one lacks."""
        missing = self.variables - values.keys()
        if missing:
            raise TemplateVariableError(self.name, sorted(missing))
        given = {key: values[key] for key in (*self.variables, *self.defaults) if key in values}
        context = {**self.defaults, **given}
        try:
            return RenderedContent(
                title=self.title.render(context).strip(),
                body=self.body.render(context).strip(),
                icon=self.icon,
                actions=tuple(
                    NotificationAction(action=action, title=title.render(context).strip())
                    for action, title in self.actions
                ),
            )
        except TemplateError as exc:  # e.g. an attribute of a string under StrictUndefined
            raise TemplateVariableError(self.name, [], str(exc)) from exc


class TemplateSet(Mapping[NotificationType, NotificationTemplate]):
    """The templates by notification type. Example: ``load_templates()[NotificationType.CUSTOM]``"""

    def __init__(self, templates: Mapping[NotificationType, NotificationTemplate]) -> None:
        self._templates = dict(templates)

    def __getitem__(self, key: NotificationType) -> NotificationTemplate:
        try:
            return self._templates[key]
        except KeyError:
            msg = f"no notification template for type {key.value!r}"
            raise TemplateDefinitionError(key.value, msg) from None

    def __iter__(self) -> Iterator[NotificationType]:
        return iter(self._templates)

    def __len__(self) -> int:
        return len(self._templates)


def load_template(path: Path) -> NotificationTemplate:
    """Parse and check one template file (its stem is the template name).

    Example: ``load_template(TEMPLATES_DIR / "session_confirmed.json").variables``
    """
    name = path.stem
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateDefinitionError(name, f"cannot read {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise TemplateDefinitionError(name, "the file must hold one JSON object")
    unknown = spec.keys() - _KEYS
    if unknown:
        raise TemplateDefinitionError(name, f"unknown keys {', '.join(sorted(unknown))}")
    variables = _string_list(name, spec.get("variables"), "variables")
    defaults = spec.get("defaults", {})
    if not isinstance(defaults, dict) or not all(isinstance(v, str) for v in defaults.values()):
        raise TemplateDefinitionError(name, "defaults must map variable names to strings")
    both = set(variables) & defaults.keys()
    if both:
        raise TemplateDefinitionError(name, f"variables {', '.join(sorted(both))} are both required and defaulted")
    icon = spec.get("icon")
    if icon is not None and not isinstance(icon, str):
        raise TemplateDefinitionError(name, "icon must be a string or null")
    sources: dict[str, str] = {"title": _text(name, spec.get("title"), "title"), "body": _text(name, spec.get("body"))}
    actions = spec.get("actions", [])
    if not isinstance(actions, list):
        raise TemplateDefinitionError(name, "actions must be a list")
    action_names: list[str] = []
    for index, item in enumerate(actions):
        if not isinstance(item, dict) or item.keys() != {"action", "title"}:
            raise TemplateDefinitionError(name, f"actions[{index}] must be {{'action': ..., 'title': ...}}")
        action_names.append(_text(name, item["action"], f"actions[{index}].action"))
        sources[f"actions[{index}].title"] = _text(name, item["title"], f"actions[{index}].title")
    declared = set(variables) | defaults.keys()
    compiled: dict[str, Template] = {}
    for field, source in sources.items():
        try:
            used = meta.find_undeclared_variables(_ENV.parse(source))
            compiled[field] = _ENV.from_string(source)
        except TemplateError as exc:
            raise TemplateDefinitionError(name, f"{field}: {exc}") from exc
        undeclared = used - declared
        if undeclared:
            raise TemplateDefinitionError(name, f"{field} uses undeclared variables {', '.join(sorted(undeclared))}")
    return NotificationTemplate(
        name=name,
        variables=frozenset(variables),
        defaults=dict(defaults),
        title=compiled["title"],
        body=compiled["body"],
        icon=icon,
        actions=tuple((action, compiled[f"actions[{i}].title"]) for i, action in enumerate(action_names)),
    )


def load_templates(directory: Path = TEMPLATES_DIR, *, require_all: bool = True) -> TemplateSet:
    """Every ``<type>.json`` of ``directory``; with ``require_all``, one per ``NotificationType``.

    Example: ``load_templates()[NotificationType.SESSION_CONFIRMED].render(values)``
    """
    known = {item.value: item for item in NotificationType}
    templates: dict[NotificationType, NotificationTemplate] = {}
    for path in sorted(directory.glob("*.json")):
        if path.stem not in known:
            raise TemplateDefinitionError(path.stem, f"{path.name} names no notification type ({', '.join(known)})")
        templates[known[path.stem]] = load_template(path)
    lacking = [value for value, item in known.items() if item not in templates]
    if require_all and lacking:
        raise TemplateDefinitionError(", ".join(lacking), f"no template file in {directory}")
    return TemplateSet(templates)


def format_session_date(moment: datetime) -> str:
    """A stable, readable UTC time. Example: ``format_session_date(dt) == "2025-06-02 14:00 UTC"``"""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def snake_case_keys(data: Mapping[str, str]) -> dict[str, str]:
    """``data`` with camelCase keys also given in snake_case (the snake_case key wins).

    Example: ``snake_case_keys({"coachName": "Ada"}) == {"coachName": "Ada", "coach_name": "Ada"}``
    """
    converted = {_CAMEL.sub(r"_\1", key).lower(): value for key, value in data.items()}
    return {**converted, **data}


def _string_list(name: str, value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.isidentifier() for item in value):
        raise TemplateDefinitionError(name, f"{field} must be a list of variable names")
    return list(value)


def _text(name: str, value: Any, field: str = "body") -> str:
    if not isinstance(value, str):
        raise TemplateDefinitionError(name, f"{field} must be a string")
    return value
