"""The SAM template: cfn-lint clean, and consistent with the handler it deploys."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file
from cfnlint.decode.cfn_yaml import load

from plugins.forge_image import Settings as ForgeSettings
from tests.deploy.lambda_events import load_by_path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "lambda" / "template.yaml"
DOCKERFILE = ROOT / "deploy" / "lambda" / "Dockerfile"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(str(TEMPLATE))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def handler() -> Any:
    """The handler module, imported by its dotted path as the Lambda runtime does."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("deploy.lambda.handler")
    finally:
        sys.path.remove(str(ROOT))


def _functions(template: dict[str, Any]) -> dict[str, Any]:
    return {
        name: resource for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def test_cfn_lint_passes() -> None:
    matches = lint_file(TEMPLATE)
    assert matches == [], "\n".join(str(m) for m in matches)


def test_cfn_lint_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Timeout: 29", "Timeout: 9000"))
    assert any("9000" in str(match) for match in lint_file(broken))


def test_every_function_command_imports_like_the_lambda_runtime(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime splits ``path/module.function`` and imports the dotted module."""
    monkeypatch.syspath_prepend(str(ROOT))
    for name, function in _functions(template).items():
        (command,) = function["Properties"]["ImageConfig"]["Command"]
        module_path, _, attribute = command.rpartition(".")
        module = importlib.import_module(module_path.replace("/", "."))
        assert callable(getattr(module, attribute)), name
        sys.modules.pop(module_path.replace("/", "."), None)


def test_environment_only_uses_variables_the_handler_reads(
    template: dict[str, Any], handler: Any
) -> None:
    known = set(handler.ALIASES) | {
        "MAMI_DATABASE_URL", "MAMI_DATA_DIR", "HOME", handler.FORWARDED_HOPS,
    } | {name + handler.SECRET_SUFFIX for name in handler.SECRET_VARIABLES}
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for function in _functions(template).values():
        env = function["Properties"].get("Environment", {}).get("Variables", {})
        variables = {**variables, **env}
    unknown = {
        v for v in variables if v not in known and not v.startswith(handler.PREFIX)
    }
    assert not unknown


def test_timeouts_fit_api_gateway_and_one_image_job(
    template: dict[str, Any], handler: Any
) -> None:
    functions = _functions(template)
    assert functions["ApiFunction"]["Properties"]["Timeout"] <= 29
    worker = functions["ImageWorkerFunction"]["Properties"]
    assert worker["Timeout"] > ForgeSettings().deadline + handler.WORKER_MARGIN_SECONDS
    assert worker["ImageConfig"]["Command"] == ["deploy/lambda/handler.worker"]
    assert [e["Type"] for e in worker["Events"].values()] == ["Schedule"]


def test_image_copies_what_the_handler_needs() -> None:
    text = DOCKERFILE.read_text()
    for needed in ("core", "plugins", "alembic", "deploy/lambda/handler.py"):
        assert f"COPY {needed} " in text


def test_image_is_the_platform_the_dependency_check_proves() -> None:
    """The base image's Python is the one dependencies.py installs and imports for, and
    the image installs the checked lock the way the check does."""
    dependencies = load_by_path(ROOT / "deploy" / "lambda" / "dependencies.py", "deps")
    text = DOCKERFILE.read_text()
    assert f"FROM public.ecr.aws/lambda/python:{dependencies.PYTHON_VERSION}\n" in text
    assert "pip install --no-cache-dir --no-deps --only-binary=:all:" in text
    assert "-r /tmp/requirements.txt" in text and "COPY deploy/lambda/requirements.txt" in text


def test_no_plain_secret_values_only_arns_and_reads_of_exactly_those(
    template: dict[str, Any], handler: Any
) -> None:
    """Every secret reaches the function as an ARN parameter; the one policy that reads
    secrets lists exactly those parameters."""
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not set(handler.SECRET_VARIABLES) - {"MAMI_DATABASE_URL"} & set(variables)
    arn_parameters = {name for name in template["Parameters"] if name.endswith("SecretArn")}
    assert arn_parameters == {"DatabasePasswordSecretArn", "ChromaTokenSecretArn",
                              "LlmApiKeySecretArn", "ForgeCredentialsSecretArn",
                              "SigningKeySecretArn"}
    assert not [p for p in template["Parameters"].values() if p.get("NoEcho")]
    (statement,) = template["Resources"]["ReadSecretsPolicy"]["Properties"][
        "PolicyDocument"]["Statement"]
    assert sorted(statement["Action"]) == ["secretsmanager:GetSecretValue", "ssm:GetParameter"]
    assert {_referenced(r) for r in statement["Resource"]} == arn_parameters
    for function in _functions(template).values():
        assert {"Ref": "ReadSecretsPolicy"} in function["Properties"]["Policies"]


def _referenced(value: Any) -> str:
    """The parameter a (possibly conditional, possibly split) ARN expression refers to."""
    text = str(value)
    (name,) = {p for p in re.findall(r"'Ref': '(\w+)'", text) if p != "AWS::NoValue"}
    return name


def test_images_on_without_a_forge_url_is_refused_by_a_rule(template: dict[str, Any]) -> None:
    rule = template["Rules"]["ImagesNeedForge"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "Images"}, "on"]}
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ForgeUrl"}, ""]}]}
