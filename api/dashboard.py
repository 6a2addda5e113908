"""The dashboard: HTML pages for people, served by the API at /, /jobs/{id}, /submit, /comparisons and
/comparisons/{id}, with their script and style sheet under /static.

The pages carry no data: they are templates (Jinja2, autoescaped) whose scripts read everything
from the JSON API (/v1/...) with fetch(), sending the token a person typed in when tokens are
configured. So a page may be served to anyone without a token, and every rule of the API (roles,
limits, the Host allow-list) applies to what a page shows or does. The submit form is built here
from the job spec's own JSON schema, so a new field or bound shows up without touching a template.

Every page is sent with a strict Content-Security-Policy: only same-origin scripts and styles (no
inline code anywhere), and same-origin connections. Pictures are fetched with the token and shown
from blob: URLs, since an <img src> cannot send an Authorization header.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from service.comparisons.schemas import (
    ARCHITECTURES,
    DEFAULT_PERMUTATION_SEED,
    DEFAULT_SEEDS,
    MAX_COMPARISON_JOBS,
)
from service.jobs.schemas import job_spec_adapter
from service.platform.states import JobStatus

HERE = Path(__file__).parent
STATIC_URL = "/static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# no-cache: a browser revalidates (ETag / Last-Modified), so a new version's script is never mixed
# with an old page.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# The live event streams, when this server has them (api/routes/events.py); the pages poll otherwise.
ALL_EVENTS = re.compile(r"/v1/events")
JOB_EVENTS = re.compile(r"/v1/jobs/\{[^}/]+\}/events")

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value a template prints is escaped, attributes included
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )
)


@dataclass(frozen=True)
class FormField:
    """One input of the submit form, read from a property of the spec's JSON schema."""

    name: str
    kind: str  # integer, number, boolean, choice, text, map
    value: str  # the default as the input shows it; "" for null (the field is then left out)
    minimum: str | None
    maximum: str | None
    min_length: int | None
    max_length: int | None
    choices: tuple[str, ...]
    hint: str
    description: str


@dataclass(frozen=True)
class SpecForm:
    discriminator: str
    variants: dict[str, list[FormField]]  # architecture -> its own fields (n_hidden, n_features)
    common: list[FormField]  # the fields every architecture has


def _number(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bounds(prop: dict[str, Any]) -> str:
    low = [f"≥ {_number(prop['minimum'])}"] if "minimum" in prop else []
    low += [f"> {_number(prop['exclusiveMinimum'])}"] if "exclusiveMinimum" in prop else []
    high = [f"≤ {_number(prop['maximum'])}"] if "maximum" in prop else []
    high += [f"< {_number(prop['exclusiveMaximum'])}"] if "exclusiveMaximum" in prop else []
    if "minimum" in prop and "maximum" in prop:
        return f"{_number(prop['minimum'])} … {_number(prop['maximum'])}"
    return ", ".join(low + high)


def form_field(name: str, prop: dict[str, Any]) -> FormField:
    options: list[dict[str, Any]] = prop.get("anyOf", [prop])
    nullable = any(option.get("type") == "null" for option in options)
    main = {**next(o for o in options if o.get("type") != "null"), **{k: v for k, v in prop.items() if k != "anyOf"}}
    kind = {"integer": "integer", "number": "number", "boolean": "boolean", "object": "map"}.get(
        main.get("type", ""), "choice" if "enum" in main else "text"
    )
    default = main.get("default")
    hints = [_bounds(main)] if kind in ("integer", "number") else []
    hints += [f"at most {main['maxLength']} characters"] if "maxLength" in main else []
    hints += [f"at most {main['maxProperties']} lines of key: value"] if "maxProperties" in main else []
    hints += ["empty: null" if nullable and default is None else f"default {_number(default)}"]
    return FormField(
        name=name,
        kind=kind,
        value="" if default is None else _number(default),
        minimum=_first(main, "minimum", "exclusiveMinimum"),
        maximum=_first(main, "maximum", "exclusiveMaximum"),
        min_length=main.get("minLength"),
        max_length=main.get("maxLength"),
        choices=tuple(main.get("enum", ())),
        hint="; ".join(hint for hint in hints if hint),
        description=main.get("description", ""),
    )


def _first(prop: dict[str, Any], *keys: str) -> str | None:
    """The browser's min/max: an exclusive bound is shown inclusive (the server refuses the bound itself)."""
    return next((_number(prop[key]) for key in keys if key in prop), None)


def spec_form(schema: dict[str, Any]) -> SpecForm:
    """The submit form of a discriminated union of specs (job_spec_adapter.json_schema())."""
    discriminator: str = schema["discriminator"]["propertyName"]
    defs: dict[str, dict[str, Any]] = schema["$defs"]
    variants = [defs[option["$ref"].rsplit("/", 1)[-1]] for option in schema["oneOf"]]
    props = [variant["properties"] for variant in variants]
    # A field is common when every architecture has it, with the same schema (defaults and bounds).
    common = [name for name in props[0] if name != discriminator and all(p.get(name) == props[0][name] for p in props)]
    own = [{n: s for n, s in p.items() if n not in common and n != discriminator} for p in props]
    return SpecForm(
        discriminator=discriminator,
        variants={
            p[discriminator]["const"]: [form_field(*item) for item in o.items()]
            for p, o in zip(props, own, strict=True)
        },
        common=[form_field(name, props[0][name]) for name in common],
    )


SPEC_FORM = spec_form(job_spec_adapter.json_schema())


def events_urls(app: FastAPI) -> dict[str, str]:
    """The event streams this server has: the pages fall back to polling when there are none. Read
    from the OpenAPI document (built once, then cached by the app), whose paths are every route's
    whichever router holds it."""
    paths = set(app.openapi().get("paths", {}))
    return {
        "all": "/v1/events" if any(ALL_EVENTS.fullmatch(p) for p in paths) else "",
        "job": "/v1/jobs/{id}/events" if any(JOB_EVENTS.fullmatch(p) for p in paths) else "",
    }


def page(request: Request, template: str, title: str, status_code: int = 200, **context: Any) -> Response:
    app: FastAPI = request.app
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "page": template.removesuffix(".html"),
            "root": request.scope.get("root_path", ""),
            "static": request.scope.get("root_path", "") + STATIC_URL,
            "events": events_urls(app),
            **context,
        },
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def not_found(request: Request, what: str) -> Response:
    return page(request, "not_found.html", "Not found", status_code=404, what=what)


Filter = Annotated[str, Query(max_length=400)]


@router.get("/", response_class=HTMLResponse)
def job_list(
    request: Request,
    status: Filter = "",
    architecture: Filter = "",
    label: Filter = "",
    name: Filter = "",
    comparison: Filter = "",
) -> Response:
    """The filters are a plain GET form; the page's script passes them on to GET /v1/jobs."""
    filters = {"status": status, "architecture": architecture, "label": label, "name": name, "comparison": comparison}
    return page(
        request,
        "jobs.html",
        "Jobs",
        filters=filters,
        statuses=[str(s) for s in JobStatus],
        architectures=list(SPEC_FORM.variants),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    if not is_uuid(job_id):
        return not_found(request, f"job {job_id[:80]}")
    return page(request, "job.html", f"Job {job_id[:8]}", job_id=job_id)


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> Response:
    return page(request, "submit.html", "Submit a job", form=SPEC_FORM)


@router.get("/comparisons", response_class=HTMLResponse)
def comparison_list(request: Request) -> Response:
    return page(
        request,
        "comparisons.html",
        "Comparisons",
        architectures=ARCHITECTURES,
        default_seeds=DEFAULT_SEEDS,
        max_jobs=MAX_COMPARISON_JOBS,
        default_permutations=f"none, {DEFAULT_PERMUTATION_SEED}",
    )


@router.get("/comparisons/{comparison_id}", response_class=HTMLResponse)
def comparison_page(request: Request, comparison_id: str) -> Response:
    if not is_uuid(comparison_id):
        return not_found(request, f"comparison {comparison_id[:80]}")
    return page(request, "comparison.html", f"Comparison {comparison_id[:8]}", comparison_id=comparison_id)


class DashboardFiles(StaticFiles):
    """The pages' scripts, style sheet and icon, with the headers the pages have."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(FILE_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, DashboardFiles(directory=HERE / "static"), name="static")
