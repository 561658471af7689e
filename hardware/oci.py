"""OCI image reference validation, after the distribution/reference grammar.

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]      host := domain-name | "[" IPv6 "]"
    path-component := [a-z0-9]+ (separator [a-z0-9]+)*      separator := [_.] | "__" | "-"+
    tag         := [\\w][\\w.-]{0,127}
    digest      := algorithm ":" hex{32,}   (sha256 needs exactly 64 hex digits)

A name is at most 255 characters. Only the syntax is checked: whether the image exists is the
registry's business when the node pulls it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hardware.exceptions import InvalidArgument

_SEPARATOR = r"(?:[._]|__|[-]+)"
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH}))"
                        rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
NAME_MAX = 255
DEFAULT_DOMAIN = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference; `domain` is the registry as written (empty when implied)."""

    domain: str
    path: str
    tag: str
    digest: str

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path


def _looks_like_domain(component: str) -> bool:
    """distribution's rule: a first component is a registry if it has '.' or ':' or is localhost."""
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse_image_reference(reference: str) -> ImageReference:
    """Parse `reference` or raise InvalidArgument saying why it is not an OCI image reference."""
    if not isinstance(reference, str) or not reference:
        raise InvalidArgument("image reference is empty")
    match = _REFERENCE.match(reference)
    if match is None:
        raise InvalidArgument(f"invalid image reference {reference!r}")
    domain, path = match["domain"] or "", match["path"]
    if domain and not _looks_like_domain(domain):
        # "library/ubuntu": the regex took "library" as a host; it is the first path component.
        path, domain = f"{domain}/{path}", ""
        if not re.fullmatch(_PATH, path):
            raise InvalidArgument(f"invalid image reference {reference!r}")
    if len(match["name"]) > NAME_MAX:
        raise InvalidArgument(f"image name longer than {NAME_MAX} characters: {reference!r}")
    digest = match["digest"] or ""
    if digest.startswith("sha256:") and len(digest) != len("sha256:") + 64:
        raise InvalidArgument(f"sha256 digest must have 64 hex digits: {reference!r}")
    return ImageReference(domain=domain, path=path, tag=match["tag"] or "", digest=digest)
