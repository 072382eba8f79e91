"""The SAM template in deploy/: cfn-lint clean, and the contract the handlers and DEPLOY.md rely on.

Nothing here talks to AWS. cfn-lint checks CloudFormation and SAM schemas, but not what
lambdatorch needs (mount path, runtimes, handler, environment) nor references to resources that
SAM generates (``<Function>Url``); the contract tests check those.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "template.yaml"
MOUNT = "/mnt/efs"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # design.md: the EFS tree


def cfn_lint() -> str:
    beside = Path(sys.executable).with_name("cfn-lint")  # the venv's, not whatever is on PATH
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    if found is None:
        pytest.fail("cfn-lint is not installed: pip install -r requirements-dev.txt")
    return found


def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [cfn_lint(), str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (
        f"cfn-lint exit {result.returncode}:\n{result.stdout}{result.stderr}"
    )


# --- the contract -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(str(TEMPLATE))


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def get_att(value: Any) -> tuple[str, str] | None:
    """``(resource, attribute)`` of an ``Fn::GetAtt``, in either of its two spellings."""
    if not isinstance(value, dict) or list(value) != ["Fn::GetAtt"]:
        return None
    target = value["Fn::GetAtt"]
    resource, attribute = target.split(".", 1) if isinstance(target, str) else target
    return resource, attribute


def merge_globals(global_value: Any, local_value: Any) -> Any:
    """SAM's Globals rules: maps merge (local wins), lists concatenate, anything else is local."""
    intrinsic = any(
        isinstance(v, dict) and any(k == "Ref" or k.startswith("Fn::") for k in v)
        for v in (global_value, local_value)
    )
    if isinstance(global_value, dict) and isinstance(local_value, dict) and not intrinsic:
        merged = dict(global_value)
        for key, value in local_value.items():
            merged[key] = merge_globals(merged[key], value) if key in merged else value
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return global_value + local_value
    return local_value


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def function(template: dict[str, Any], name: str) -> dict[str, Any]:
    """The function's properties as SAM deploys them (Globals merged in)."""
    resource = template["Resources"][name]
    assert resource["Type"] == "AWS::Serverless::Function"
    globals_ = template.get("Globals", {}).get("Function", {})
    return merge_globals(globals_, resource.get("Properties", {}))


def env(props: dict[str, Any]) -> dict[str, Any]:
    return props.get("Environment", {}).get("Variables", {})


FUNCTIONS = ["PythonFunction", "NativeFunction"]


def test_is_a_sam_template(template: dict[str, Any]) -> None:
    transform = template["Transform"]
    assert "AWS::Serverless-2016-10-31" in (
        transform if isinstance(transform, list) else [transform]
    )
    assert set(resources_of(template, "AWS::Serverless::Function")) == set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_mounts_the_access_point_at_mnt_efs(template: dict[str, Any], name: str) -> None:
    props = function(template, name)
    (config,) = props["FileSystemConfigs"]  # Lambda allows exactly one
    assert config["LocalMountPath"] == MOUNT
    assert get_att(config["Arn"]) == ("AccessPoint", "Arn")
    assert template["Resources"]["AccessPoint"]["Type"] == "AWS::EFS::AccessPoint"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_waits_for_every_mount_target(template: dict[str, Any], name: str) -> None:
    depends = template["Resources"][name].get("DependsOn", [])
    depends = [depends] if isinstance(depends, str) else depends
    mount_targets = resources_of(template, "AWS::EFS::MountTarget")
    assert len(mount_targets) >= 2
    assert set(mount_targets) <= set(depends)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_runs_in_the_vpc_next_to_a_mount_target(
    template: dict[str, Any], name: str
) -> None:
    vpc = function(template, name)["VpcConfig"]
    subnets = {s["Ref"] for s in vpc["SubnetIds"]}
    mount_targets = resources_of(template, "AWS::EFS::MountTarget").values()
    assert subnets <= {m["Properties"]["SubnetId"]["Ref"] for m in mount_targets}
    azs = {str(template["Resources"][s]["Properties"]["AvailabilityZone"]) for s in subnets}
    assert len(azs) >= 2, "the functions' subnets must span two AZs"
    assert vpc["SecurityGroupIds"] == [ref("LambdaSecurityGroup")]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_environment_names_the_models(template: dict[str, Any], name: str) -> None:
    variables = env(function(template, name))
    assert variables["LAMBDATORCH_MODELS"] == f"{MOUNT}/models"
    assert variables["LAMBDATORCH_DEFAULT_MODEL"] == ref("DefaultModel")
    assert variables["LAMBDATORCH_PRELOAD"] == ref("DefaultModel")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_has_a_url_whose_auth_is_a_parameter(template: dict[str, Any], name: str) -> None:
    assert function(template, name)["FunctionUrlConfig"]["AuthType"] == ref("FunctionUrlAuthType")
    param = template["Parameters"]["FunctionUrlAuthType"]
    assert param["Default"] == "AWS_IAM"
    assert set(param["AllowedValues"]) == {"AWS_IAM", "NONE"}


def test_python_function(template: dict[str, Any]) -> None:
    props = function(template, "PythonFunction")
    runtime = re.fullmatch(r"python3\.(\d+)", props["Runtime"])
    assert runtime and int(runtime.group(1)) >= 12, props["Runtime"]
    assert props["Handler"] == "lambdatorch.handler.lambda_handler"
    assert env(props)["PYTHONPATH"] == f"{MOUNT}/python"
    code = TEMPLATE.parent / props["CodeUri"]  # SAM resolves CodeUri from the template's directory
    assert code.is_dir() and any(code.glob("*.py")), code


def test_native_function(template: dict[str, Any]) -> None:
    props = function(template, "NativeFunction")
    assert props["Runtime"] == "provided.al2023"
    assert props["Handler"] == "bootstrap"
    assert props["Architectures"] == ["x86_64"]
    assert str(props["CodeUri"]).endswith("bootstrap.zip")
    assert (TEMPLATE.parent / props["CodeUri"]).resolve() == REPO / "dist" / "bootstrap.zip"
    assert env(props)["LAMBDATORCH_LIBTORCH"] == f"{MOUNT}/python/torch/lib"


def test_access_point_fixes_the_user_and_root(template: dict[str, Any]) -> None:
    props = template["Resources"]["AccessPoint"]["Properties"]
    assert props["FileSystemId"] == ref("FileSystem")
    assert props["PosixUser"] == {"Uid": "1000", "Gid": "1000"}
    root = props["RootDirectory"]
    assert root["Path"] == "/lambdatorch"
    assert root["CreationInfo"] == {"OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "755"}


def test_efs_is_encrypted_and_reachable_only_from_the_lambda_group(
    template: dict[str, Any],
) -> None:
    (fs,) = resources_of(template, "AWS::EFS::FileSystem").values()
    assert fs["Properties"]["Encrypted"] is True
    for mount_target in resources_of(template, "AWS::EFS::MountTarget").values():
        assert mount_target["Properties"]["SecurityGroups"] == [ref("EfsSecurityGroup")]
    (rule,) = template["Resources"]["EfsSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 2049, 2049)
    assert rule["SourceSecurityGroupId"] == ref("LambdaSecurityGroup")
    assert "CidrIp" not in rule


def test_function_subnets_have_no_route_out(template: dict[str, Any]) -> None:
    subnets = {s["Ref"] for s in function(template, "PythonFunction")["VpcConfig"]["SubnetIds"]}
    tables = {
        a["Properties"]["RouteTableId"]["Ref"]
        for a in resources_of(template, "AWS::EC2::SubnetRouteTableAssociation").values()
        if a["Properties"]["SubnetId"]["Ref"] in subnets
    }
    assert tables, "the private subnets need an explicit route table"
    routes = resources_of(template, "AWS::EC2::Route").values()
    assert not [r for r in routes if r["Properties"]["RouteTableId"]["Ref"] in tables]
    assert not resources_of(template, "AWS::EC2::NatGateway")


def test_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    memory = params["MemorySize"]
    assert (memory["Default"], memory["MinValue"], memory["MaxValue"]) == (2048, 128, 10240)
    assert params["Timeout"]["Default"] == 30
    model = params["DefaultModel"]
    assert model["AllowedPattern"] == MODEL_NAME
    assert re.fullmatch(model["AllowedPattern"], model["Default"])
    for bad in ["", "../etc", ".hidden", "a/b", "x" * 65]:
        assert not re.fullmatch(model["AllowedPattern"], bad), bad


def test_public_urls_get_both_permissions(template: dict[str, Any]) -> None:
    """Since October 2025 a NONE-auth URL needs InvokeFunctionUrl and InvokeFunction."""
    condition = template["Conditions"]["PublicUrls"]
    assert condition == {"Fn::Equals": [ref("FunctionUrlAuthType"), "NONE"]}
    permissions = resources_of(template, "AWS::Lambda::Permission").values()
    for name in FUNCTIONS:
        granted = {
            p["Properties"]["Action"]
            for p in permissions
            if p["Properties"]["FunctionName"] == ref(name)
            and p.get("Condition") == "PublicUrls"
            and p["Properties"]["Principal"] == "*"
        }
        assert granted == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}, name


def test_outputs(template: dict[str, Any]) -> None:
    outputs = {name: o["Value"] for name, o in template["Outputs"].items()}
    for name in FUNCTIONS:
        # SAM names the AWS::Lambda::Url it generates from FunctionUrlConfig "<function>Url".
        assert (f"{name}Url", "FunctionUrl") in [get_att(v) for v in outputs.values()], name
        assert ref(name) in outputs.values(), name
    for needed in ["FileSystem", "AccessPoint", "LambdaSecurityGroup"]:
        assert ref(needed) in outputs.values(), needed
    subnets = outputs["PrivateSubnetIds"]
    assert subnets == {"Fn::Join": [",", [ref("PrivateSubnetA"), ref("PrivateSubnetB")]]}
