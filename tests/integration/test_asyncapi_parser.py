"""The official AsyncAPI parser (``@asyncapi/parser``, run with Node.js) accepts the generated document.

The parser and its Avro schema parser are installed with npm into a cache folder outside the
repository (``~/.cache/eventbus/asyncapi-parser``), once per pinned version; ``tests/asyncapi_parse.mjs``
parses the documents and prints the diagnostics. Without Node.js or npm the tests skip locally
and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infra._asyncapi import asyncapi_document, message_id
from infra._cli import main
from schemas import CATALOG
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

PARSER_VERSION = "3.6.6"
AVRO_PARSER_VERSION = "3.1.0"
PACKAGES = {"@asyncapi/parser": PARSER_VERSION, "@asyncapi/avro-schema-parser": AVRO_PARSER_VERSION}
CACHE_DIR = Path.home() / ".cache" / "eventbus" / "asyncapi-parser"
SCRIPT = Path(__file__).resolve().parents[1] / "asyncapi_parse.mjs"


def _installed(directory: Path) -> bool:
    """Whether ``directory`` holds exactly the pinned versions of the packages."""
    for name, wanted in PACKAGES.items():
        manifest = directory / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text(encoding="utf-8")).get("version") != wanted:
            return False
    return True


def _install(npm: str) -> Path:
    """The cache folder with the pinned packages, installed there first when missing (into a temporary sibling)."""
    if _installed(CACHE_DIR):
        return CACHE_DIR
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = CACHE_DIR.with_name(f"{CACHE_DIR.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    command = [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact"]
    done = subprocess.run(
        [*command, *(f"{name}@{version}" for name, version in PACKAGES.items())],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"npm install of the AsyncAPI parser failed:\n{done.stderr[-4000:]}")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)  # an older pinned version
    try:
        staging.rename(CACHE_DIR)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    assert _installed(CACHE_DIR), f"{CACHE_DIR} lacks {PACKAGES}"
    return CACHE_DIR


def _dotted_name() -> dict[str, Any]:
    """The document with a full name in an Avro ``name``, which AsyncAPI's Avro schema refuses."""
    document = asyncapi_document()
    schema = document["components"]["messages"][message_id("session:created")]["payload"]["schema"]
    schema["name"] = f"{schema.pop('namespace')}.{schema['name']}"
    return document


def _undefined_type() -> dict[str, Any]:
    """The document with an Avro field of a type defined nowhere (only the Avro schema parser sees it)."""
    document = asyncapi_document()
    schema = document["components"]["messages"][message_id("coach:status_changed")]["payload"]["schema"]
    schema["fields"][1]["type"] = "NoSuchType"
    return document


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The script's report per document: the CLI's YAML, its JSON with a prefix, and two broken ones."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "Node.js and npm are needed to run the official AsyncAPI parser (@asyncapi/parser)"
        if IN_CI:
            pytest.fail(f"CI runs the AsyncAPI parser test, but {reason}")
        pytest.skip(reason)
    packages = _install(npm)
    folder = tmp_path_factory.mktemp("asyncapi")
    names = ("asyncapi.yaml", "asyncapi.json", "dotted-name.json", "undefined-type.json")
    paths = {name: folder / name for name in names}
    env = {"EVENTBUS_TOPIC_PREFIX": "", "EVENTBUS_PROFILE": "kafka"}
    written = CliRunner().invoke(main, ["asyncapi", "--out", str(paths["asyncapi.yaml"])], env=env)
    assert written.exit_code == 0, written.output
    written = CliRunner().invoke(
        main,
        ["asyncapi", "--format", "json", "--out", str(paths["asyncapi.json"])],
        env={"EVENTBUS_TOPIC_PREFIX": "staging.", "EVENTBUS_REPLICATION_FACTOR": "1"},
    )
    assert written.exit_code == 0, written.output
    paths["dotted-name.json"].write_text(json.dumps(_dotted_name()), encoding="utf-8")
    paths["undefined-type.json"].write_text(json.dumps(_undefined_type()), encoding="utf-8")

    done = subprocess.run(
        [node, str(SCRIPT), str(packages), *(str(path) for path in paths.values())],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {Path(report["document"]).name: report for report in found}


def _errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in report["diagnostics"] if d["severity"] == "error"]


@pytest.mark.timeout(360)
@pytest.mark.parametrize("name", ["asyncapi.yaml", "asyncapi.json"])
def test_the_official_parser_finds_zero_errors(reports: dict[str, dict[str, Any]], name: str) -> None:
    report = reports[name]

    assert (report["parser"], report["avroSchemaParser"]) == (PARSER_VERSION, AVRO_PARSER_VERSION)
    assert _errors(report) == [], json.dumps(_errors(report)[:20], indent=2)
    assert report["parsed"]


@pytest.mark.timeout(360)
@pytest.mark.parametrize("name", ["asyncapi.yaml", "asyncapi.json"])
def test_the_parsed_document_lists_every_catalog_type(reports: dict[str, dict[str, Any]], name: str) -> None:
    report = reports[name]
    expected = asyncapi_document()

    assert report["messages"] == list(CATALOG.event_types)
    assert report["avroPayloads"] == list(CATALOG.event_types), "every payload is read as an Avro schema"
    assert report["channels"] == list(CATALOG.topics)
    assert report["operations"] == list(expected["operations"])


@pytest.mark.timeout(360)
def test_the_parser_reports_a_full_name_in_an_avro_name(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["dotted-name.json"]

    paths = {error["path"] for error in _errors(report)}
    assert "components/messages/session.created/payload/schema/name" in paths
    assert not report["parsed"]


@pytest.mark.timeout(360)
def test_the_avro_schema_parser_reports_an_undefined_type(reports: dict[str, dict[str, Any]]) -> None:
    errors = _errors(reports["undefined-type.json"])

    assert [(error["code"], error["path"]) for error in errors] == [
        ("avro-schema", "components/messages/coach.status_changed/payload/schema")
    ]
    assert "NoSuchType" in errors[0]["message"]
