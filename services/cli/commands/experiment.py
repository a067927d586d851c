"""`chunkrec experiment create`: an A/B experiment through the router's admin API (what
`chunkrec up` does for itself; the compose stack runs it once).

    CHUNKREC_ROUTER_API_KEY=... chunkrec experiment create fiited-vs-fixed \\
        --arm fixed64 --arm fiited --arm fixed_eq --control fixed64 --router-url URL
    # experiment 1 running: arms fixed64 (control), fiited, fixed_eq
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """A/B experiments through the router's admin API."""


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="experiment name")],
    arm: Annotated[list[str], typer.Option(
        "--arm", help="an arm: MODEL (the serving name; the arm is named after it) or "
                      "NAME=MODEL[:WEIGHT]; repeat for each arm (at least two)")],
    control: Annotated[str | None, typer.Option(help="the control arm (default: the first)")
                       ] = None,
    router_url: Annotated[str | None, typer.Option(
        help="router base URL (default http://CHUNKREC_ROUTER_HOST:CHUNKREC_ROUTER_PORT)")] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="start it at once")] = True,
    margin: Annotated[float | None, typer.Option(
        min=0.0001, max=0.9999, help="decision rules: the default ones with this primary "
        "non-inferiority margin (relative: 0.01 = each arm's CTR at least 99% of control's); "
        "without it the experiment has no rules and the report uses the defaults")] = None,
) -> None:
    """Create (and start) an experiment with equal weights unless given; prints its id."""
    import httpx

    from services.cli.preflight import fail_if
    from storage.settings import get_settings

    settings = get_settings()
    fail_if(None if settings.router.api_key else
            "set CHUNKREC_ROUTER_API_KEY to the router's admin key")
    arms = [_arm(spec) for spec in arm]
    if len(arms) < 2:
        raise typer.BadParameter("give at least two --arm", param_hint="--arm")
    chosen = control or arms[0]["name"]
    if chosen not in {a["name"] for a in arms}:
        raise typer.BadParameter(f"{chosen!r} is not one of the arms", param_hint="--control")
    for a in arms:
        a["control"] = a["name"] == chosen
    url = (router_url or f"http://{settings.router.host}:{settings.router.port}").rstrip("/")
    headers = {"X-API-Key": settings.router.api_key}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            made = client.post("/v1/experiments", json={"name": name, "arms": arms})
            fail_if(_refused(made))
            exp = made.json()["id"]
            if margin is not None:
                fail_if(_refused(client.put(f"/v1/experiments/{exp}/rules",
                                            json=rules_with_margin(margin))))
            if start:
                fail_if(_refused(client.post(f"/v1/experiments/{exp}/start")))
    except httpx.HTTPError as exc:
        fail_if(f"router at {url} cannot be reached ({type(exc).__name__}): start it "
                "(`chunkrec route`) or give --router-url")
    shown = ", ".join(f"{a['name']}{' (control)' if a['control'] else ''}" for a in arms)
    typer.echo(f"experiment {exp} {'running' if start else 'created'}: arms {shown}")


def rules_with_margin(margin: float) -> dict[str, object]:
    """The default decision rules (services/experiments/decision.py) with `margin` as the
    primary metric's non-inferiority margin: the body of PUT /v1/experiments/{id}/rules."""
    from services.experiments.decision import DEFAULT_RULES

    rules = DEFAULT_RULES.to_dict()
    rules["primary"] = {**rules["primary"], "test": "non_inferiority", "margin": margin}
    rules["cost"] = list(rules["cost"])
    return rules


def _arm(spec: str) -> dict[str, object]:
    """'fiited' -> arm fiited of model fiited, weight 1; 'b=fiited:2' -> arm b, weight 2."""
    name, sep, rest = spec.partition("=")
    model, _, weight = (rest if sep else name).partition(":")
    name = name if sep else model
    try:
        w = float(weight) if weight else 1.0
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: weight {weight!r} is not a number",
                                 param_hint="--arm") from None
    return {"name": name.strip(), "model": model.strip(), "weight": w}


def _refused(response: object) -> str | None:
    import httpx

    assert isinstance(response, httpx.Response)
    if response.is_success:
        return None
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:200]
    if isinstance(detail, list):  # pydantic's errors: "arms.1.weight: Input should be ..."
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
                           for e in detail if isinstance(e, dict))
    return f"router refused ({response.status_code}): {detail}"
