"""The Apache Kafka broker's jars, resolved from Maven Central into a cache folder, once.

The version is pinned in ``infra/kafka/pom.xml`` (``kafka.version``); Maven copies the broker and everything
it pulls, plus the SLF4J binding the release tarball adds, into ``<cache>/kafka-<version>-<pom hash>/libs``.
A second call finds the folder and returns at once. ``EVENTBUS_KAFKA_JARS`` points at a ready folder instead
(no Maven needed); ``EVENTBUS_CACHE_DIR`` moves the cache (default ``~/.cache/eventbus``).

Example: ``java -cp "$(python -m infra._kafka_jars)/*" kafka.Kafka server.properties``
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from schemas.errors import ConfigurationError

__all__ = ["KAFKA_VERSION", "POM", "cache_dir", "find_java", "kafka_jars"]

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
"""The pom that pins the Apache Kafka version (nothing is built from it)."""

KAFKA_VERSION: str = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text(encoding="utf-8"))[1]  # type: ignore[index]
"""The pinned Apache Kafka version, read from the pom."""

_ENV_JARS = "EVENTBUS_KAFKA_JARS"
_JAVA_HINT = "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
_MAVEN_HINT = f"install Maven (Debian: apt-get install maven) or set {_ENV_JARS} to a folder of the broker's jars"
_RESOLVE_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where eventbus keeps downloaded and built things. Example: ``cache_dir() / "kafka-4.1.1-…"``"""
    override = os.environ.get("EVENTBUS_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "eventbus"


def find_java() -> Path:
    """The ``java`` executable (``$JAVA_HOME/bin/java`` first), checked to be Java 17 or newer.

    Raises ``ConfigurationError`` with one line saying what to install. Example: ``find_java()``
    """
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate is not None and candidate.is_file() else shutil.which("java")
    if java is None:
        raise ConfigurationError(f"Apache Kafka needs Java, which was not found: {_JAVA_HINT}")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"cannot run {java} -version ({exc}): {_JAVA_HINT}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    major = int(match[1]) if match else 0
    if major == 1 and match and match[2]:  # "1.8.0" style
        major = int(match[2])
    if major < 17:
        found = major or "?"
        msg = f"Apache Kafka {KAFKA_VERSION} needs Java 17 or newer, {java} is {found}: {_JAVA_HINT}"
        raise ConfigurationError(msg)
    return Path(java)


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:12]


def kafka_jars() -> Path:
    """The folder holding the pinned Apache Kafka broker's jars, resolving them with Maven the first time.

    Safe to call from several processes at once (a file lock serializes the resolution).
    Raises ``ConfigurationError`` when Maven is missing or fails. Example: ``kafka_jars() / "kafka_2.13-4.1.1.jar"``
    """
    override = os.environ.get(_ENV_JARS)
    if override:
        folder = Path(override).expanduser()
        if not any(folder.glob("kafka_2.13-*.jar")):
            raise ConfigurationError(f"{_ENV_JARS}={override!r} holds no kafka_2.13-*.jar")
        return folder
    root = cache_dir() / f"kafka-{KAFKA_VERSION}-{_pom_digest()}"
    libs = root / "libs"
    if (root / "complete").is_file():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "complete").is_file():
            _resolve_into(libs)
            (root / "complete").write_text(KAFKA_VERSION + "\n", encoding="utf-8")
    return libs


def _resolve_into(libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = f"resolving the Apache Kafka {KAFKA_VERSION} jars needs Maven, which was not found: {_MAVEN_HINT}"
        raise ConfigurationError(msg)
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"]
    argv += [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    print(f"eventbus: resolving the Apache Kafka {KAFKA_VERSION} jars with Maven (once)", file=sys.stderr)  # noqa: T201
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_RESOLVE_TIMEOUT_S, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"Maven could not resolve the Apache Kafka jars: {exc}") from exc
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        msg = f"Maven could not resolve the Apache Kafka {KAFKA_VERSION} jars (exit {done.returncode}): {tail}"
        raise ConfigurationError(msg)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


if __name__ == "__main__":
    try:
        print(kafka_jars())  # noqa: T201
    except ConfigurationError as error:
        print(f"error: {error.message}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
