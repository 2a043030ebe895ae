"""The Apache Kafka container image, built on this machine with podman (no registry can be pulled from here).

Two layers: a Debian root filesystem with a headless Java 17, made by ``debootstrap`` from the apt mirror the
machine is configured with and imported as ``localhost/eventbus-jre17:bookworm``; on top, the Maven-resolved
broker jars, a quiet log4j2 config and ``kafka-start.sh`` (the official ``apache/kafka`` image's environment
conventions). The tag carries a digest of those inputs, so a second call finds the image and returns at once;
``localhost/eventbus-kafka:<version>`` always names the newest build (for ``infra/compose.yaml``).

Run ``python -m infra._kafka_image`` (``infra/dev/services.sh`` does) to build or reuse it; it prints the tag.
Where images can be pulled, set ``EVENTBUS_KAFKA_IMAGE=apache/kafka:<version>`` and nothing is built.

Example: ``kafka_image()  # 'localhost/eventbus-kafka:4.1.1-3f9c0a1b2c3d'``
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from schemas.errors import ConfigurationError

from ._kafka_jars import KAFKA_VERSION, POM, cache_dir, kafka_jars

__all__ = ["BASE_IMAGE", "IMAGE_ENV", "build_kafka_image", "kafka_image"]

IMAGE_ENV = "EVENTBUS_KAFKA_IMAGE"
"""Names an image to use instead of building one (for example the official ``apache/kafka:4.1.1``)."""

BASE_IMAGE = "localhost/eventbus-jre17:bookworm"
_IMAGE = "localhost/eventbus-kafka"
_CONTEXT = Path(__file__).resolve().parent / "kafka"
_INPUTS = (POM, _CONTEXT / "log4j2.yaml", _CONTEXT / "image" / "Containerfile", _CONTEXT / "image" / "kafka-start.sh")
_PODMAN_HINT = "install podman (Debian: apt-get install podman runc; infra/dev/services.sh does it and configures it)"


def _podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        raise ConfigurationError(f"building the Apache Kafka image needs podman, which was not found: {_PODMAN_HINT}")
    return podman


def _run(argv: list[str], what: str, *, timeout: float, stdin: bytes | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-5:])
        raise ConfigurationError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout.decode(errors="replace").strip()


def _image_exists(podman: str, tag: str) -> bool:
    done = subprocess.run([podman, "image", "exists", tag], capture_output=True, timeout=60, check=False)  # noqa: S603
    return done.returncode == 0


def _inputs_digest() -> str:
    digest = hashlib.sha256(BASE_IMAGE.encode())
    for path in _INPUTS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def kafka_image() -> str:
    """The image for Apache Kafka containers: ``$EVENTBUS_KAFKA_IMAGE``, or the local build's tag (built if missing)."""
    override = os.environ.get(IMAGE_ENV)
    return override if override else build_kafka_image()


def build_kafka_image() -> str:
    """Build the local Apache Kafka image unless a build of the same inputs exists; returns its tag.

    Raises ``ConfigurationError`` naming what is missing (podman, debootstrap, Java, Maven) or what failed.
    """
    podman = _podman()
    tag = f"{_IMAGE}:{KAFKA_VERSION}-{_inputs_digest()}"
    if _image_exists(podman, tag):
        return tag
    home = cache_dir() / "image"
    home.mkdir(parents=True, exist_ok=True)
    with (home / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _image_exists(podman, tag):
            return tag
        if not _image_exists(podman, BASE_IMAGE):
            _build_base(podman, home)
        libs = kafka_jars()
        with tempfile.TemporaryDirectory(dir=home, prefix="context-") as context:
            root = Path(context)
            shutil.copytree(libs, root / "libs")
            shutil.copy(_CONTEXT / "log4j2.yaml", root / "log4j2.yaml")
            shutil.copy(_CONTEXT / "image" / "kafka-start.sh", root / "kafka-start.sh")
            shutil.copy(_CONTEXT / "image" / "Containerfile", root / "Containerfile")
            print(f"eventbus: building the Apache Kafka {KAFKA_VERSION} image {tag}", file=sys.stderr)  # noqa: T201
            argv = [podman, "build", "--quiet", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag]
            argv += ["-t", f"{_IMAGE}:{KAFKA_VERSION}", "-f", str(root / "Containerfile"), str(root)]
            _run(argv, "podman build of the Apache Kafka image", timeout=600)
    return tag


def _apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 sources first, then sources.list)."""
    for path in [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in match[1]:
                return match[1]
    raise ConfigurationError("no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")


def _build_base(podman: str, home: Path) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        msg = "building the Java base image needs debootstrap: apt-get install debootstrap (infra/dev/services.sh does)"
        raise ConfigurationError(msg)
    mirror = _apt_mirror()
    print(f"eventbus: building {BASE_IMAGE} with debootstrap from {mirror} (once, about a minute)", file=sys.stderr)  # noqa: T201
    with tempfile.TemporaryDirectory(dir=home, prefix="rootfs-") as rootfs:
        argv = [debootstrap, "--variant=minbase", "--include=openjdk-17-jre-headless", "bookworm", rootfs, mirror]
        _run(argv, "debootstrap of the Java base image", timeout=1200)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
            shutil.rmtree(Path(rootfs) / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)  # noqa: S603, S607
        try:
            assert tar.stdout is not None  # noqa: S101 - stdout=PIPE
            done = subprocess.run(  # noqa: S603
                [podman, "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                capture_output=True,
                timeout=600,
                check=False,
            )
        finally:
            tar.wait()
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise ConfigurationError(f"podman import of the Java base image failed: {' | '.join(tail)}")


if __name__ == "__main__":
    try:
        print(kafka_image())  # noqa: T201
    except ConfigurationError as error:
        print(f"error: {error.message}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
