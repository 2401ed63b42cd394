"""`keyflash openapi --typescript DIR`: the frontend's typed client, made from the merged OpenAPI.

Three files, committed under clients/typescript/: `openapi.json` (the document they were made
from, so an offline test can tell when the API moved on), `schema.d.ts` (openapi-typescript's
output, pinned in clients/typescript/package.json) and `client.ts`, our own fetch wrapper
(devkit/typescript/client.ts) with each operation's documented statuses filled in, so that it
throws `UnexpectedResponse` at run time for what the types say cannot come. We keep the wrapper
rather than pinning openapi-fetch: its error type is the union of the documented error bodies,
which are all one `ErrorEnvelope` with `statusCode: number`, so a frontend could not switch on
it; ours types the envelope per status and is shorter than a wrapper around openapi-fetch would
be. See docs/typescript.md#a-typed-client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from devkit.layout import REPO_ROOT

CLIENT_DIR = REPO_ROOT / "clients" / "typescript"
WRAPPER = Path(__file__).resolve().parent / "typescript" / "client.ts"
GENERATOR = CLIENT_DIR / "node_modules" / ".bin" / "openapi-typescript"
DOCUMENT, TYPES, CLIENT = "openapi.json", "schema.d.ts", "client.ts"
# The wrapper's line the documented statuses go into (`render_client`).
SLOT = "const DOCUMENTED: Readonly<Record<string, { statuses: number[]; own?: number[] }>> = {};"


def render(document: dict[str, Any]) -> str:
    """The document as `keyflash openapi` writes it (and as clients/typescript/ commits it)."""
    return json.dumps(document, indent=2) + "\n"


def render_client(document: dict[str, Any]) -> str:
    """client.ts: the wrapper, its `DOCUMENTED` table filled in from `document`."""
    from shared.http.openapi import ENVELOPE_REF

    wrapper = WRAPPER.read_text()
    if wrapper.count(SLOT) != 1:
        raise RuntimeError(f"{WRAPPER} must have the line `{SLOT}` once")
    rows = []
    for path, operations in sorted(document["paths"].items()):
        for method, operation in sorted(operations.items()):
            responses = operation["responses"]
            statuses = sorted(int(status) for status in responses)
            own = [
                status
                for status in statuses
                if status >= 400
                and responses[str(status)]
                .get("content", {})
                .get("application/json", {})
                .get("schema")
                != ENVELOPE_REF
            ]
            entry = f"statuses: {statuses}" + (f", own: {own}" if own else "")
            rows.append(f"  {json.dumps(f'{method.upper()} {path}')}: {{ {entry} }},")
    return wrapper.replace(SLOT, SLOT.removesuffix("{};") + "{\n" + "\n".join(rows) + "\n};")


def write_client(directory: Path, document: dict[str, Any]) -> list[Path]:
    """Write openapi.json, schema.d.ts and client.ts into `directory`; the paths written.

    The generator is this repository's (clients/typescript/node_modules), whatever `directory`
    is. Raises RuntimeError with what to do when Node or that generator is missing, before
    anything is written.
    """
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed: the types come from openapi-typescript (Node)")
    if not GENERATOR.exists():
        # Always this repository's pinned generator, so the types match what CI regenerates.
        raise RuntimeError(
            f"{GENERATOR} is missing: run `npm ci` in {CLIENT_DIR} first (the generator pinned "
            f"there is used whatever DIR is ({directory}); an `npm ci` in DIR does not count)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / DOCUMENT).write_text(render(document))
        (directory / CLIENT).write_text(render_client(document))
    except OSError as error:
        raise RuntimeError(f"cannot write into {directory}: {error.strerror}") from None
    generated = subprocess.run(
        [str(GENERATOR), DOCUMENT, "--output", TYPES],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    if generated.returncode != 0:
        last = (generated.stderr.strip() or generated.stdout.strip()).splitlines()[-1:]
        raise RuntimeError(f"openapi-typescript failed: {' '.join(last) or generated.returncode}")
    return [directory / DOCUMENT, directory / TYPES, directory / CLIENT]
