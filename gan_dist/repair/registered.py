"""What the MLflow model registry holds under a `models:/` URI: the version an alias names,
and, when a URI names nothing, what the store does hold (names, aliases, versions)."""

from __future__ import annotations

from typing import Any

from gan_dist.core.errors import GanDistError


def registered_version(uri: str, tracking_uri: str | None) -> str:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> models:/NAME/VERSION."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store
    from gan_dist.tracking.stores import tracking_uri as default_uri

    name, _, version = uri.removeprefix("models:/").partition("/")
    if version:
        return uri
    name, _, alias = name.partition("@")
    client = open_store(tracking_uri or default_uri(), create=False)
    try:
        found = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        said = what_is_registered(uri, client) or str(exc).splitlines()[0]
        raise GanDistError(f"model.init {uri}: {said}") from None
    return f"models:/{name}/{found.version}"


def what_is_registered(uri: str, client: Any = None) -> str | None:
    """Why a models:/ URI names nothing, with what the store does hold: the registered
    names (closest first), or the model's aliases and versions. None when the store cannot
    be asked, or the URI does name something."""
    import difflib

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    rest = uri.removeprefix("models:/")
    name, _, version = rest.partition("/")
    name, _, alias = name.partition("@")
    client = client or MlflowClient()
    try:
        names = sorted(m.name for m in client.search_registered_models())
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            held = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
            shape = "" if alias or version else "; give models:/NAME@ALIAS or models:/NAME/VERSION"
            return f"no registered model named {name!r}{hint}; registered: {held}{shape}"
        versions = sorted(
            int(v.version) for v in client.search_model_versions(f"name='{quote(name)}'")
        )
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return None
    held = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    span = ", ".join(map(str, versions[:3])) + (
        f", ... {versions[-1]}" if len(versions) > 3 else ""
    )
    span = span or "none"
    if alias and alias not in aliases:
        close = difflib.get_close_matches(alias, list(aliases), n=1)
        hint = f" (did you mean @{close[0]}?)" if close else ""
        return f"{name} has no alias @{alias}{hint}; its aliases: {held}; its versions: {span}"
    if version and (not version.isdigit() or int(version) not in versions):
        return f"{name} has no version {version}; its versions: {span}; its aliases: {held}"
    if not (alias or version):
        return (
            f"give a version or an alias: models:/{name}/VERSION (versions {span}) or "
            f"models:/{name}@ALIAS (aliases: {held})"
        )
    return None


def quote(name: str) -> str:
    return name.replace("'", "\\'")
