"""What data a shard spec names, cheaply enough to check at every resume.

A resume compares these identities, not the recipe's text: `shards`, `./shards/`, its
absolute path and a symlink to it name one pack, while the same `shards` typed in another
working directory, or a pack replaced in place, is other data. An identity is JSON (it is
kept in the checkpoint's state.json):

- a packed folder: the sha256 of its manifest's shard list and counts (each shard's name,
  split, samples, bytes and sha256, which the pack wrote), with the folder's resolved path,
  which is only shown: the same pack copied elsewhere is the same data; the sha256 of the
  shard list in sorted order tells a reordered list (another stream) from other shards;
- local shard files (a brace pattern, or one .tar): each file's resolved path, size and
  modification time, the usual cheap identity (hashing gigabytes at every resume is not);
- a remote shard (s3://, gs://, https://, pipe:...): its URL, nothing else being cheap to
  know, so an object replaced under the same URL is not noticed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gan_dist.data.pack import read_manifest

SPLIT_WORDS = {"train": "training", "val": "validation"}
USED = {"train": "trained on", "val": "validated on"}


def data_identity(
    spec: str | None, split: str = "train", allow_shell: bool = False
) -> dict[str, Any] | None:
    """The identity of the shards `spec` names (a recipe's data.train, or the validation
    shards it resolved to; `split`: the split a pack is read for), or None for no data.

    A pack: {"pack": resolved path, "manifest_sha256": hex, "samples": {split: count},
    "shards": count}. Shard files: {"shards": [{"path", "bytes", "mtime_ns"} for a local
    file, {"url"} for a remote one]}. Reads the manifest or stats the files, nothing more.
    Raises GanDistError for a folder without a manifest or a missing local shard."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        shards = manifest.get("shards") or []
        listed = {"counts": manifest.get("counts"), "shards": manifest.get("shards")}
        in_order = sorted(json.dumps(s, sort_keys=True) for s in shards)
        return {
            "pack": str(path.resolve()),
            "manifest_sha256": _sha256(listed),
            "content_sha256": _sha256({"counts": manifest.get("counts"), "shards": in_order}),
            "samples": dict(manifest.get("counts") or {}),
            "shards": len(manifest.get("shards") or []),
        }
    from gan_dist.data.stream import shard_urls

    return {"shards": [_shard(url) for url in shard_urls(spec, split, allow_shell)]}


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _shard(url: str) -> dict[str, Any]:
    if "://" in url or url.startswith("pipe:"):
        return {"url": url}
    path = Path(url).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def describe(identity: dict[str, Any] | None) -> str:
    """An identity in a few words: `the pack at PATH`, `3 shard files (FIRST, ...)`."""
    if identity is None:
        return "no data"
    if "pack" in identity:
        return f"the pack at {identity['pack']}"
    shards = identity.get("shards") or []
    first = _where(shards[0]) if shards else "none"
    more = ", ..." if len(shards) > 1 else ""
    return f"{len(shards)} shard file{'s' if len(shards) != 1 else ''} ({first}{more})"


def _where(shard: dict[str, Any]) -> str:
    return str(shard.get("path") or shard.get("url"))


def identity_change(
    old: dict[str, Any] | None, new: dict[str, Any] | None, split: str = "train"
) -> str | None:
    """How the data `new` differs from `old` (identities from `data_identity` of the data
    read for `split`), in words for a message; None when they are the same data, however
    the recipe names it."""
    if old == new:
        return None
    used = USED.get(split, "read")
    if old is None or new is None or ("pack" in old) != ("pack" in new):
        return f"this run {used} {describe(old)}, this names {describe(new)}"
    if "pack" in old:
        return _pack_change(old, new, split)
    return _shards_change(old.get("shards") or [], new.get("shards") or [], used)


def _pack_change(old: dict[str, Any], new: dict[str, Any], split: str) -> str | None:
    if old.get("manifest_sha256") == new.get("manifest_sha256"):
        return None  # the same shards, listed with their sha256: moved or copied
    differ = []
    if old.get("content_sha256") and old.get("content_sha256") == new.get("content_sha256"):
        differ.append("the same shards listed in another order, so read in another order")
    splits = {*old.get("samples", {}), *new.get("samples", {})}
    for name in sorted(splits if split == "train" else {split}):
        was, now = old.get("samples", {}).get(name, 0), new.get("samples", {}).get(name, 0)
        if was != now:
            differ.append(f"{was} -> {now} {SPLIT_WORDS.get(name, name)} samples")
    if old.get("shards") != new.get("shards"):
        differ.append(f"{old.get('shards')} -> {new.get('shards')} shards")
    where = "" if old["pack"] == new["pack"] else f", which was at {old['pack']}"
    return (
        f"the pack at {new['pack']} is not the one this run {USED.get(split, 'read')}{where}; "
        f"its manifest.json differs: {', '.join(differ) or 'the same counts, other shards'}"
    )


def _shards_change(old: list[dict[str, Any]], new: list[dict[str, Any]], used: str) -> str:
    if sorted(map(_sha256, old)) == sorted(map(_sha256, new)):
        return f"the shard files this run {used}, named in another order (read in another order)"
    differ = [f"{len(old)} -> {len(new)} shard files"] if len(old) != len(new) else []
    for was, now in zip(old, new, strict=False):
        if was == now:
            continue
        if _where(was) != _where(now):
            differ.append(f"{_where(was)} -> {_where(now)}")
        else:
            differ.append(f"{_where(now)} changed since ({_file_change(was, now)})")
        break
    return f"the shards are not the ones this run {used}: {', '.join(differ)}"


def _file_change(was: dict[str, Any], now: dict[str, Any]) -> str:
    said = []
    if was.get("bytes") != now.get("bytes"):
        said.append(f"{was.get('bytes')} -> {now.get('bytes')} bytes")
    if was.get("mtime_ns") != now.get("mtime_ns"):
        said.append(f"modified {_time(was.get('mtime_ns'))} -> {_time(now.get('mtime_ns'))}")
    return ", ".join(said)


def _time(ns: int | None) -> str:
    if ns is None:
        return "unknown"
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")
