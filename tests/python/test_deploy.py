"""Deployment: the SAM template in deploy/, what it becomes, who may touch the file system, and the
script that fills it.

Nothing here talks to AWS. cfn-lint checks the template against the CloudFormation and SAM
schemas; the SAM transform (``aws-sam-translator``, the library behind the transform AWS runs)
turns it into the CloudFormation a stack is made of, which is linted again. The contract tests
check what lambdatorch needs (mount path, runtimes, handler, environment), the network and the
permissions. The file-system policy is evaluated for every kind of client, the way AWS combines a
resource policy with identity policies. ``deploy/fill_efs.sh`` runs for real against a local
directory, from a local artifacts directory, with the wheel built by ``make wheel``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "template.yaml"
FILL_EFS = REPO / "deploy" / "fill_efs.sh"
README = REPO / "README.md"
MOUNT = "/mnt/efs"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # design.md: the EFS tree
FUNCTIONS = ["PythonFunction", "NativeFunction"]
#: The native handler on Lambda Managed Instances, deployed only with ManagedInstances=true.
MANAGED = "NativeManagedFunction"
#: Where the Managed Instances image holds the tree (README, "Lambda Managed Instances").
IMAGE_TREE = "/opt/lambdatorch"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lambdatorch:1"
NFS = ("tcp", 2049, 2049)


def cfn_lint() -> str:
    beside = Path(sys.executable).with_name("cfn-lint")  # the venv's, not whatever is on PATH
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    if found is None:
        pytest.fail("cfn-lint is not installed: pip install -r requirements-dev.txt")
    return found


def run_cfn_lint(path: Path) -> None:
    result = subprocess.run(
        [cfn_lint(), str(path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (
        f"cfn-lint {path.name}: exit {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def test_cfn_lint_passes() -> None:
    run_cfn_lint(TEMPLATE)


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # Through JSON: plain dicts and strs instead of cfn-lint's node types.
    return json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))


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


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return template["Resources"][name]["Properties"]


def function(template: dict[str, Any], name: str) -> dict[str, Any]:
    """The function's properties as SAM deploys them (Globals merged in)."""
    resource = template["Resources"][name]
    assert resource["Type"] == "AWS::Serverless::Function"
    globals_ = template.get("Globals", {}).get("Function", {})
    return merge_globals(globals_, resource.get("Properties", {}))


def env(properties: dict[str, Any]) -> dict[str, Any]:
    return properties.get("Environment", {}).get("Variables", {})


def refs_in(value: Any) -> set[str]:
    """Every name a ``Ref`` or ``${...}`` in ``value`` refers to."""
    if isinstance(value, dict):
        found = {value["Ref"]} if isinstance(value.get("Ref"), str) else set()
        sub = value.get("Fn::Sub")
        if isinstance(sub, str):
            found |= set(re.findall(r"\$\{([A-Za-z0-9:.]+)\}", sub))
        return found.union(*(refs_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs_in(v) for v in value))
    return set()


# --- the SAM transform ----------------------------------------------------------------------------


class NoManagedPolicies:
    """The template names no managed policy through SAM's ``Policies``, so none is looked up."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def aws_offline() -> Iterator[None]:
    """The transform needs a Region for its pseudo-parameters and nothing else: no credentials,
    no network (these machines reach no AWS endpoint)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.delenv(name, raising=False)
        yield


def sam_transform(template: dict[str, Any], **parameters: str) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    document = copy.deepcopy(template)
    for name, resource in resources_of(document, "AWS::Serverless::Function").items():
        if resource["Properties"].get("PackageType") == "Image":
            continue  # an image is already in ECR: ImageUri is a parameter
        # What `sam deploy` does first: upload CodeUri and put its S3 location in its place.
        resource["Properties"]["CodeUri"] = f"s3://sam-artifacts/{name}.zip"
    return transform(document, parameters, NoManagedPolicies())  # type: ignore[arg-type]


PARAMETER_SETS = {
    "defaults": {},
    "public-locked": {
        "FunctionUrlAuthType": "NONE",
        "LoaderAccess": "false",
        "ArtifactsBucketName": "my-artifacts",
        "ReservedConcurrency": "5",
        "AvailabilityZoneA": "us-east-1c",
        "AvailabilityZoneB": "us-east-1d",
        "PreloadModels": "",
    },
    "managed-instances": {
        "ManagedInstances": "true",
        "ManagedImageUri": IMAGE_URI,
        "FunctionUrlAuthType": "NONE",
        "ManagedMaxConcurrency": "32",
    },
}


@pytest.fixture(scope="module", params=sorted(PARAMETER_SETS))
def transformed(request, template, aws_offline) -> dict[str, Any]:
    return sam_transform(template, **PARAMETER_SETS[request.param])


def test_transformed_template_is_plain_cloudformation_and_lints_clean(
    transformed: dict[str, Any], tmp_path: Path
) -> None:
    assert "Transform" not in transformed
    kinds = {r["Type"] for r in transformed["Resources"].values()}
    assert not [k for k in kinds if k.startswith("AWS::Serverless::")]
    for name in FUNCTIONS:
        assert transformed["Resources"][name]["Type"] == "AWS::Lambda::Function"
        assert transformed["Resources"][f"{name}Aliaslive"]["Type"] == "AWS::Lambda::Alias"
        assert transformed["Resources"][f"{name}Url"]["Type"] == "AWS::Lambda::Url"
    path = tmp_path / "transformed.json"
    path.write_text(json.dumps(transformed, indent=1))
    run_cfn_lint(path)


def test_function_urls_and_their_public_permissions_belong_to_the_alias(
    transformed: dict[str, Any],
) -> None:
    resources = transformed["Resources"]
    for name in [*FUNCTIONS, MANAGED]:
        alias = ref(f"{name}Aliaslive")
        assert resources[f"{name}Url"]["Properties"]["TargetFunctionArn"] == alias
        assert resources[f"{name}Url"]["Properties"]["AuthType"] == ref("FunctionUrlAuthType")
        for permission in ("UrlPublicInvokeUrl", "UrlPublicInvokeFunction"):
            # SAM's own permissions would name the function; the URL is the alias's.
            key = name.removesuffix("Function") + permission
            assert resources[key]["Properties"]["FunctionName"] == alias, key
    # SAM adds no permissions of its own when AuthType is a parameter: ours are the only ones.
    permissions = [n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Permission"]
    assert len(permissions) == 6, permissions
    for name in permissions:
        managed = name.startswith(MANAGED.removesuffix("Function"))
        assert resources[name]["Condition"] == ("PublicManagedUrl" if managed else "PublicUrls")


def test_every_parameter_that_shapes_a_version_publishes_a_new_one(
    transformed: dict[str, Any], template: dict[str, Any]
) -> None:
    """SAM names the version after the properties as written, where a parameter is only its name,
    so a new TreeVersion would leave the alias on the old configuration. CloudFormation replaces
    (republishes) a version whose description changes: every parameter the function's
    configuration reads must appear in that description."""
    resources = transformed["Resources"]
    for name in FUNCTIONS:
        (version,) = [
            r
            for r in resources.values()
            if r["Type"] == "AWS::Lambda::Version" and r["Properties"]["FunctionName"] == ref(name)
        ]
        configuration = dict(resources[name]["Properties"])
        # Not per version: concurrency belongs to the function, the role and network to the stack.
        for unversioned in ("ReservedConcurrentExecutions", "Role", "VpcConfig", "Tags"):
            configuration.pop(unversioned, None)
        shaping = refs_in(configuration) & set(template["Parameters"])
        assert {"TreeVersion", "DefaultModel", "PreloadModels", "MemorySize"} <= shaping
        assert shaping <= refs_in(version["Properties"]["Description"]), name


def test_sam_alone_would_not_publish_a_version_for_a_new_tree_version(
    template: dict[str, Any], aws_offline: None
) -> None:
    """The premise of the description above, as aws-sam-translator (pinned) behaves."""

    def versions(**parameters: str) -> set[str]:
        resources = sam_transform(template, **parameters)["Resources"]
        return {n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Version"}

    assert versions(TreeVersion="1") == versions(TreeVersion="2")


# --- the functions --------------------------------------------------------------------------------


def test_is_a_sam_template(template: dict[str, Any]) -> None:
    transform = template["Transform"]
    assert "AWS::Serverless-2016-10-31" in (
        transform if isinstance(transform, list) else [transform]
    )
    assert set(resources_of(template, "AWS::Serverless::Function")) == {*FUNCTIONS, MANAGED}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_mounts_the_access_point_at_mnt_efs(template: dict[str, Any], name: str) -> None:
    properties = function(template, name)
    (config,) = properties["FileSystemConfigs"]  # Lambda allows exactly one
    assert config["LocalMountPath"] == MOUNT
    assert get_att(config["Arn"]) == ("AccessPoint", "Arn")
    assert template["Resources"]["AccessPoint"]["Type"] == "AWS::EFS::AccessPoint"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_waits_for_every_mount_target_and_its_efs_permission(
    template: dict[str, Any], name: str
) -> None:
    depends = template["Resources"][name].get("DependsOn", [])
    depends = [depends] if isinstance(depends, str) else depends
    mount_targets = resources_of(template, "AWS::EFS::MountTarget")
    assert len(mount_targets) >= 2
    assert set(mount_targets) | {"EfsReadPolicy"} <= set(depends)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_runs_in_the_vpc_next_to_a_mount_target(
    template: dict[str, Any], name: str
) -> None:
    vpc = function(template, name)["VpcConfig"]
    subnets = {s["Ref"] for s in vpc["SubnetIds"]}
    mount_targets = resources_of(template, "AWS::EFS::MountTarget").values()
    assert subnets <= {m["Properties"]["SubnetId"]["Ref"] for m in mount_targets}
    azs = {json.dumps(props(template, s)["AvailabilityZone"]) for s in subnets}
    assert len(azs) >= 2, "the functions' subnets must span two AZs"
    assert vpc["SecurityGroupIds"] == [ref("LambdaSecurityGroup")]


def test_availability_zones_are_parameters_with_a_default(template: dict[str, Any]) -> None:
    """A fixed pick from !GetAZs can land where the loader's instance type is not offered."""
    for subnet, param, index in [
        ("PrivateSubnetA", "AvailabilityZoneA", 0),
        ("PrivateSubnetB", "AvailabilityZoneB", 1),
    ]:
        condition = "PickAz" + param[-1]
        assert template["Conditions"][condition] == {"Fn::Equals": [ref(param), ""]}
        assert props(template, subnet)["AvailabilityZone"] == {
            "Fn::If": [condition, {"Fn::Select": [index, {"Fn::GetAZs": ""}]}, ref(param)]
        }
        assert template["Parameters"][param]["Default"] == ""
    # The loader mounts through the first subnet's mount target: same AZ.
    loader_az = props(template, "LoaderSubnet")["AvailabilityZone"]
    assert loader_az == props(template, "PrivateSubnetA")["AvailabilityZone"]
    pattern = template["Parameters"]["AvailabilityZoneA"]["AllowedPattern"]
    for good in ["", "us-east-1a", "eu-central-2b", "us-gov-west-1a", "ap-southeast-4c"]:
        assert re.fullmatch(pattern, good), good
    for bad in ["us-east-1", "use1-az1", "US-EAST-1A"]:
        assert not re.fullmatch(pattern, bad), bad


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_environment_names_the_models_and_the_tree_version(
    template: dict[str, Any], name: str
) -> None:
    variables = env(function(template, name))
    assert variables["LAMBDATORCH_MODELS"] == f"{MOUNT}/models"
    assert variables["LAMBDATORCH_DEFAULT_MODEL"] == ref("DefaultModel")
    assert variables["LAMBDATORCH_PRELOAD"] == ref("PreloadModels")
    assert variables["TREE_VERSION"] == ref("TreeVersion")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_is_published_behind_the_alias_live(template: dict[str, Any], name: str) -> None:
    properties = function(template, name)
    assert properties["AutoPublishAlias"] == "live"
    assert properties["AutoPublishAliasAllProperties"] is True
    assert {"TreeVersion", "DefaultModel", "PreloadModels"} <= refs_in(
        properties["VersionDescription"]
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_has_a_url_whose_auth_is_a_parameter(template: dict[str, Any], name: str) -> None:
    assert function(template, name)["FunctionUrlConfig"]["AuthType"] == ref("FunctionUrlAuthType")
    param = template["Parameters"]["FunctionUrlAuthType"]
    assert param["Default"] == "AWS_IAM"
    assert set(param["AllowedValues"]) == {"AWS_IAM", "NONE"}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_reserved_concurrency_is_optional(template: dict[str, Any], name: str) -> None:
    """0 must mean "no reservation": a reservation of 0 would throttle every request."""
    assert function(template, name)["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasReservedConcurrency", ref("ReservedConcurrency"), ref("AWS::NoValue")]
    }
    assert template["Conditions"]["HasReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [ref("ReservedConcurrency"), "0"]}]
    }
    param = template["Parameters"]["ReservedConcurrency"]
    assert (param["Type"], param["Default"], param["MinValue"]) == ("Number", 0, 0)


def test_python_function(template: dict[str, Any]) -> None:
    properties = function(template, "PythonFunction")
    runtime = re.fullmatch(r"python3\.(\d+)", properties["Runtime"])
    assert runtime and int(runtime.group(1)) >= 12, properties["Runtime"]
    assert properties["Handler"] == "lambdatorch.handler.lambda_handler"
    assert env(properties)["PYTHONPATH"] == f"{MOUNT}/python"
    code = TEMPLATE.parent / properties["CodeUri"]  # SAM resolves CodeUri from the template's dir
    assert code.is_dir() and any(code.glob("*.py")), code
    # The loader installs with the same Python (numpy's wheels and .pyc files are per version).
    assert re.search(r"PYTHON=\$\{LT_PYTHON:-python3\.(\d+)\}", FILL_EFS.read_text()).group(
        1
    ) == runtime.group(1)


def test_native_function(template: dict[str, Any]) -> None:
    properties = function(template, "NativeFunction")
    assert properties["Runtime"] == "provided.al2023"
    assert properties["Handler"] == "bootstrap"
    assert properties["Architectures"] == ["x86_64"]
    assert str(properties["CodeUri"]).endswith("bootstrap.zip")
    assert (TEMPLATE.parent / properties["CodeUri"]).resolve() == REPO / "dist" / "bootstrap.zip"
    assert env(properties)["LAMBDATORCH_LIBTORCH"] == f"{MOUNT}/python/torch/lib"


def test_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    memory = params["MemorySize"]
    assert (memory["Default"], memory["MinValue"], memory["MaxValue"]) == (2048, 128, 10240)
    assert params["Timeout"]["Default"] == 30
    model = params["DefaultModel"]
    assert model["AllowedPattern"] == MODEL_NAME
    assert re.fullmatch(model["AllowedPattern"], model["Default"])
    bad_names = ["", "../etc", ".hidden", "a/b", "x" * 65]
    for bad in bad_names:
        assert not re.fullmatch(model["AllowedPattern"], bad), bad
    preload = params["PreloadModels"]
    assert preload["Default"] == model["Default"]
    for good in ["", "resnet18", "resnet18,resnet18-v2", "a.b_c-d,e"]:
        assert re.fullmatch(preload["AllowedPattern"], good), good
    for bad in [*bad_names[1:], ",", "a,", "a,,b", "a, b"]:
        assert not re.fullmatch(preload["AllowedPattern"], bad), bad


# --- network --------------------------------------------------------------------------------------


def rule(r: dict[str, Any]) -> tuple[str, int, int]:
    return (str(r["IpProtocol"]), int(r["FromPort"]), int(r["ToPort"]))


def test_functions_may_only_open_nfs_to_the_mount_targets(template: dict[str, Any]) -> None:
    group = props(template, "LambdaSecurityGroup")
    assert "SecurityGroupIngress" not in group
    (egress,) = group["SecurityGroupEgress"]
    assert rule(egress) == NFS
    assert egress["DestinationSecurityGroupId"] == ref("EfsSecurityGroup")
    assert "CidrIp" not in egress
    assert not [
        r
        for r in resources_of(template, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == ref("LambdaSecurityGroup")
    ]


def test_mount_targets_accept_nfs_from_the_functions_and_the_loader_only(
    template: dict[str, Any],
) -> None:
    (fs,) = resources_of(template, "AWS::EFS::FileSystem").values()
    assert fs["Properties"]["Encrypted"] is True
    for mount_target in resources_of(template, "AWS::EFS::MountTarget").values():
        assert mount_target["Properties"]["SecurityGroups"] == [ref("EfsSecurityGroup")]
    efs_group = props(template, "EfsSecurityGroup")
    assert "SecurityGroupIngress" not in efs_group
    ingress = {
        r["Properties"]["SourceSecurityGroupId"]["Ref"]: (r.get("Condition"), r["Properties"])
        for r in resources_of(template, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == ref("EfsSecurityGroup")
    }
    assert set(ingress) == {"LambdaSecurityGroup", "LoaderSecurityGroup"}
    assert ingress["LambdaSecurityGroup"][0] is None
    assert ingress["LoaderSecurityGroup"][0] == "WithLoader"
    for _, rule_props in ingress.values():
        assert rule(rule_props) == NFS
        assert "CidrIp" not in rule_props
    # Mount targets open no connections: the egress rule matches nothing (AWS CDK's rule).
    (egress,) = efs_group["SecurityGroupEgress"]
    assert egress["CidrIp"] == "255.255.255.255/32"
    assert rule(egress) == ("icmp", 252, 86)


def test_loader_has_its_own_group_with_no_way_in(template: dict[str, Any]) -> None:
    loader = template["Resources"]["LoaderSecurityGroup"]
    assert loader["Condition"] == "WithLoader"
    assert "SecurityGroupIngress" not in loader["Properties"]
    egress = {rule(r): r for r in loader["Properties"]["SecurityGroupEgress"]}
    assert set(egress) == {("tcp", 443, 443), NFS}
    assert egress[NFS]["DestinationSecurityGroupId"] == ref("EfsSecurityGroup")
    assert not [
        r
        for r in resources_of(template, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] in (ref("LoaderSecurityGroup"), ref("LambdaSecurityGroup"))
    ]


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


# --- who may do what on the file system ----------------------------------------------------------

FUNCTION_ROLE = "arn:aws:iam::111122223333:role/FunctionRole"
LOADER_ROLE = "arn:aws:iam::111122223333:role/LoaderRole"
ADMIN_ROLE = "arn:aws:iam::111122223333:role/Admin"
ACCESS_POINT = "arn:aws:elasticfilesystem:us-east-1:111122223333:access-point/fsap-0123"
FILE_SYSTEM = "arn:aws:elasticfilesystem:us-east-1:111122223333:file-system/fs-0123"
OTHER_ACCESS_POINT = "arn:aws:elasticfilesystem:us-east-1:111122223333:access-point/fsap-9999"
CLIENT_ACTIONS = [f"elasticfilesystem:Client{a}" for a in ("Mount", "Write", "RootAccess")]


def resolve(value: Any, conditions: dict[str, bool]) -> Any:
    """The template fragment as CloudFormation resolves it: conditions applied, ``AWS::NoValue``
    dropped, the roles' and the access point's ARNs filled in."""
    arns = {
        "FunctionRole": FUNCTION_ROLE,
        "LoaderRole": LOADER_ROLE,
        "AccessPoint": ACCESS_POINT,
        "FileSystem": FILE_SYSTEM,
    }
    if isinstance(value, list):
        items = [resolve(v, conditions) for v in value]
        return [v for v in items if v is not None]
    if not isinstance(value, dict):
        return value
    if value == ref("AWS::NoValue"):
        return None
    if "Fn::If" in value:
        name, yes, no = value["Fn::If"]
        return resolve(yes if conditions[name] else no, conditions)
    if (target := get_att(value)) is not None:
        assert target[1] == "Arn", target
        return arns[target[0]]
    return {
        k: v for k, v in ((k, resolve(v, conditions)) for k, v in value.items()) if v is not None
    }


def condition_holds(condition: dict[str, Any], context: dict[str, Any]) -> bool:
    """IAM's operators for the keys used here; a negated operator holds when the key is absent."""
    for operator, tests in condition.items():
        for key, expected in tests.items():
            actual = context.get(key)
            if operator == "Bool":
                if actual is None or str(actual).lower() != expected:
                    return False
            elif operator in ("StringEquals", "ArnEquals"):
                if actual != expected:
                    return False
            elif operator in ("StringNotEquals", "ArnNotEquals"):
                if actual is not None and actual == expected:
                    return False
            else:
                raise AssertionError(f"operator {operator} not modelled")
    return True


def matches(statement: dict[str, Any], action: str, principal: str | None) -> bool:
    actions = statement["Action"]
    actions = [actions] if isinstance(actions, str) else actions
    if "*" not in actions and action not in actions:
        return False
    if "Principal" not in statement:  # an identity policy: the principal is its owner
        return True
    allowed = statement["Principal"]["AWS"]
    allowed = [allowed] if isinstance(allowed, str) else allowed
    return "*" in allowed or principal in allowed


def decide(
    file_system_policy: dict[str, Any],
    identity: dict[str | None, list[dict[str, Any]]],
    principal: str | None,
    action: str,
    context: dict[str, Any],
) -> bool:
    """AWS's evaluation within one account: an explicit deny anywhere wins, then an allow in either
    the file-system policy or the principal's identity policies (EFS's documented rule)."""
    context = {**context, "aws:PrincipalArn": principal}
    statements = [(s, True) for s in file_system_policy["Statement"]] + [
        (s, False) for s in identity.get(principal, [])
    ]
    applicable = [
        s
        for s, _ in statements
        if matches(s, action, principal) and condition_holds(s.get("Condition", {}), context)
    ]
    if any(s["Effect"] == "Deny" for s in applicable):
        return False
    return any(s["Effect"] == "Allow" for s in applicable)


def identity_policies(template: dict[str, Any], conditions: dict[str, bool]) -> dict:
    """Each principal's EFS statements: the template's policies, and an administrator's ``*``."""
    policies: dict[str | None, list[dict[str, Any]]] = {
        ADMIN_ROLE: [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        None: [],  # anonymous: a client mounted without `iam`
    }
    owners = {"FunctionRole": FUNCTION_ROLE, "LoaderRole": LOADER_ROLE}
    for name in ("EfsReadPolicy", "LoaderPolicy"):
        resource = template["Resources"][name]
        if "Condition" in resource and not conditions[resource["Condition"]]:
            continue
        document = resolve(resource["Properties"]["PolicyDocument"], conditions)
        efs = [s for s in document["Statement"] if "elasticfilesystem:" in json.dumps(s["Action"])]
        for role in resource["Properties"]["Roles"]:
            policies.setdefault(owners[role["Ref"]], []).extend(efs)
    return policies


@pytest.mark.parametrize("loader", [True, False], ids=["loader", "no-loader"])
def test_file_system_policy_who_may_mount_write_and_be_root(
    template: dict[str, Any], loader: bool
) -> None:
    conditions = {"WithLoader": loader, "CreateArtifactsBucket": True}
    policy = resolve(props(template, "FileSystem")["FileSystemPolicy"], conditions)
    identity = identity_policies(template, conditions)
    principals = {
        "functions": FUNCTION_ROLE,
        "loader": LOADER_ROLE,
        "admin": ADMIN_ROLE,
        "anonymous": None,
    }
    granted: dict[tuple[str, str, bool, str], bool] = {}
    for who, principal in principals.items():
        for action in CLIENT_ACTIONS:
            for tls in (True, False):
                for access_point in (ACCESS_POINT, OTHER_ACCESS_POINT):
                    context = {
                        "aws:SecureTransport": tls,
                        "elasticfilesystem:AccessedViaMountTarget": True,
                        "elasticfilesystem:AccessPointArn": access_point,
                    }
                    allowed = decide(policy, identity, principal, action, context)
                    granted[who, action.split(":Client")[1], tls, access_point] = allowed
    allowed = {key for key, ok in granted.items() if ok}
    mount = {(w, "Mount", True, ACCESS_POINT) for w in ("functions", "admin")}
    if loader:
        mount |= {("loader", a, True, ACCESS_POINT) for a in ("Mount", "Write")}
    # The policy alone lets the functions and the loader mount through another access point of
    # this file system (the access point cannot be named in it); creating one takes an
    # administrator, who may mount anyway.
    other = {(w, a, tls, OTHER_ACCESS_POINT) for (w, a, tls, _) in mount if w != "admin"}
    assert allowed == mount | other | {("admin", "Mount", True, OTHER_ACCESS_POINT)}
    # Said plainly: nothing without TLS, nothing for an anonymous client, nobody as root, and no
    # principal but the loader's role may write, however broad its IAM permissions.
    assert not [k for k in allowed if not k[2] or k[0] == "anonymous" or k[1] == "RootAccess"]
    assert {k[0] for k in allowed if k[1] == "Write"} == ({"loader"} if loader else set())


def test_file_system_policy_statements(template: dict[str, Any]) -> None:
    statements = {
        s["Sid"]: s
        for s in props(template, "FileSystem")["FileSystemPolicy"]["Statement"]
        if "Sid" in s
    }
    loader_if = [
        s["Fn::If"]
        for s in props(template, "FileSystem")["FileSystemPolicy"]["Statement"]
        if "Fn::If" in s
    ]
    tls = statements["DenyWithoutTls"]
    assert (tls["Effect"], tls["Principal"], tls["Action"]) == ("Deny", {"AWS": "*"}, "*")
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    functions = statements["FunctionsMountReadOnly"]
    assert functions["Effect"] == "Allow"
    assert get_att(functions["Principal"]["AWS"]) == ("FunctionRole", "Arn")
    assert functions["Action"] == "elasticfilesystem:ClientMount"
    ((condition, loader, no_value),) = loader_if
    assert (condition, no_value) == ("WithLoader", ref("AWS::NoValue"))
    assert loader["Sid"] == "LoaderMountsAndWrites"
    assert get_att(loader["Principal"]["AWS"]) == ("LoaderRole", "Arn")
    assert sorted(loader["Action"]) == CLIENT_ACTIONS[:2]
    writes = statements["OnlyTheLoaderWrites"]
    assert (writes["Effect"], writes["Principal"]) == ("Deny", {"AWS": "*"})
    assert writes["Action"] == "elasticfilesystem:ClientWrite"
    root = statements["NoRootAccess"]
    assert (root["Effect"], root["Action"]) == ("Deny", "elasticfilesystem:ClientRootAccess")
    assert "Condition" not in root
    allows = [s for s in statements.values() if s["Effect"] == "Allow"] + [loader]
    assert not [s for s in allows if s["Principal"]["AWS"] == "*"], "no anonymous access"


def test_functions_share_one_role_whose_efs_permission_is_read_only_through_the_access_point(
    template: dict[str, Any],
) -> None:
    for name in FUNCTIONS:
        assert get_att(function(template, name)["Role"]) == ("FunctionRole", "Arn")
        assert "Policies" not in function(template, name)
    role = props(template, "FunctionRole")
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"
    }
    managed = "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
    assert role["ManagedPolicyArns"] == [{"Fn::Sub": managed}]
    assert "Policies" not in role  # the file system policy names the role: no cycle back
    read = props(template, "EfsReadPolicy")
    assert read["Roles"] == [ref("FunctionRole")]
    (statement,) = read["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "elasticfilesystem:ClientMount")
    assert get_att(statement["Resource"]) == ("FileSystem", "Arn")
    condition = statement["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
    assert get_att(condition) == ("AccessPoint", "Arn")


def test_loader_role_reads_the_artifacts_prefix_and_writes_efs_through_the_access_point(
    template: dict[str, Any],
) -> None:
    role = template["Resources"]["LoaderRole"]
    assert role["Condition"] == "WithLoader"
    assert role["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    policy = template["Resources"]["LoaderPolicy"]
    assert policy["Condition"] == "WithLoader"
    assert policy["Properties"]["Roles"] == [ref("LoaderRole")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(statements) == {
        "MountAndWriteThroughTheAccessPoint",
        "ReadArtifacts",
        "ListArtifacts",
    }
    efs = statements["MountAndWriteThroughTheAccessPoint"]
    assert sorted(efs["Action"]) == CLIENT_ACTIONS[:2]
    assert get_att(efs["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]) == (
        "AccessPoint",
        "Arn",
    )
    bucket = {
        "Fn::If": ["CreateArtifactsBucket", ref("ArtifactsBucket"), ref("ArtifactsBucketName")]
    }
    read = statements["ReadArtifacts"]
    assert read["Action"] == "s3:GetObject"  # read only: nothing on the instance can change them
    assert read["Resource"] == {
        "Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/lambdatorch/*", {"Bucket": bucket}]
    }
    listing = statements["ListArtifacts"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "lambdatorch/*"}}


def test_artifacts_bucket_is_private_encrypted_and_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ArtifactsBucket"]
    assert bucket["Condition"] == "CreateArtifactsBucket"
    assert template["Conditions"]["CreateArtifactsBucket"] == {
        "Fn::Equals": [ref("ArtifactsBucketName"), ""]
    }
    block = bucket["Properties"]["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    (encryption,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (statement,) = props(template, "ArtifactsBucketPolicy")["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == (
        "Deny",
        "*",
        "s3:*",
    )
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_access_point_fixes_the_user_and_root(template: dict[str, Any]) -> None:
    access_point = props(template, "AccessPoint")
    assert access_point["FileSystemId"] == ref("FileSystem")
    assert access_point["PosixUser"] == {"Uid": "1000", "Gid": "1000"}
    root = access_point["RootDirectory"]
    assert root["Path"] == "/lambdatorch"
    assert root["CreationInfo"] == {"OwnerUid": "1000", "OwnerGid": "1000", "Permissions": "755"}


def test_public_urls_get_both_permissions_and_only_for_url_calls(template: dict[str, Any]) -> None:
    """Since October 2025 a NONE-auth URL needs lambda:InvokeFunctionUrl and lambda:InvokeFunction;
    each is limited to what a URL does, so the public cannot invoke the function by other means."""
    condition = template["Conditions"]["PublicUrls"]
    assert condition == {"Fn::Equals": [ref("FunctionUrlAuthType"), "NONE"]}
    permissions = resources_of(template, "AWS::Lambda::Permission").values()
    for name in FUNCTIONS:
        granted = {
            p["Properties"]["Action"]: p["Properties"]
            for p in permissions
            if p["Properties"]["FunctionName"] == ref(f"{name}.Alias")
            and p.get("Condition") == "PublicUrls"
            and p["Properties"]["Principal"] == "*"
        }
        assert set(granted) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}, name
        assert granted["lambda:InvokeFunctionUrl"]["FunctionUrlAuthType"] == "NONE"
        assert "InvokedViaFunctionUrl" not in granted["lambda:InvokeFunctionUrl"]
        assert granted["lambda:InvokeFunction"]["InvokedViaFunctionUrl"] is True
        assert "FunctionUrlAuthType" not in granted["lambda:InvokeFunction"]


def test_outputs(template: dict[str, Any]) -> None:
    outputs = {name: o["Value"] for name, o in template["Outputs"].items()}
    for name in FUNCTIONS:
        # SAM names the AWS::Lambda::Url it generates from FunctionUrlConfig "<function>Url".
        assert (f"{name}Url", "FunctionUrl") in [get_att(v) for v in outputs.values()], name
        assert ref(name) in outputs.values(), name
    for needed in ["FileSystem", "AccessPoint", "LambdaSecurityGroup", "LoaderSecurityGroup"]:
        assert ref(needed) in outputs.values(), needed
    subnets = outputs["PrivateSubnetIds"]
    assert subnets == {"Fn::Join": [",", [ref("PrivateSubnetA"), ref("PrivateSubnetB")]]}
    assert outputs["ArtifactsBucketName"] == {
        "Fn::If": ["CreateArtifactsBucket", ref("ArtifactsBucket"), ref("ArtifactsBucketName")]
    }


# --- Lambda Managed Instances (ManagedInstances=true) ---------------------------------------------


def condition_value(template: dict[str, Any], name: str, parameters: dict[str, str]) -> bool:
    """A named condition of the template, evaluated for the given (else default) parameters."""

    def value(expr: Any) -> Any:
        if isinstance(expr, dict) and "Ref" in expr:
            return parameters.get(expr["Ref"], str(template["Parameters"][expr["Ref"]]["Default"]))
        if isinstance(expr, dict) and "Condition" in expr:
            return condition_value(template, expr["Condition"], parameters)
        if isinstance(expr, dict):
            ((op, args),) = expr.items()
            if op == "Fn::Equals":
                return str(value(args[0])) == str(value(args[1]))
            if op == "Fn::Not":
                return not value(args[0])
            if op == "Fn::And":
                return all(value(a) for a in args)
            if op == "Fn::Or":
                return any(value(a) for a in args)
            raise AssertionError(f"condition function {op} not understood")
        return expr

    return bool(value(template["Conditions"][name]))


def names_in(value: Any) -> set[str]:
    """Every resource or parameter a ``Ref``, ``Fn::GetAtt`` or ``${...}`` names (``X.Alias``
    and ``X.Arn`` count as ``X``)."""
    found = {n.split(".")[0] for n in refs_in(value)}
    if isinstance(value, dict):
        target = get_att(value)
        if target:
            found.add(target[0])
        return found.union(*(names_in(v) for v in value.values()))
    if isinstance(value, list):
        return found.union(*(names_in(v) for v in value))
    return found


def test_default_stack_gets_nothing_of_the_managed_instances_variant(
    template: dict[str, Any], aws_offline: None
) -> None:
    """With the default parameters, every resource and output the variant adds is switched off,
    and nothing that stays refers to one of them: the default stack is the EFS stack as before."""
    assert template["Parameters"]["ManagedInstances"]["Default"] == "false"
    transformed = sam_transform(template)
    variant = {"WithManagedInstances", "PublicManagedUrl"}
    for section in ("Resources", "Outputs"):
        items = transformed[section]
        added = {n for n, r in items.items() if r.get("Condition") in variant}
        for name in added:
            assert not condition_value(template, items[name]["Condition"], {}), name
        for name, item in items.items():
            if name not in added:
                uses = names_in(item) | set(item.get("DependsOn", []))
                assert not uses & added, (name, uses & added)
        if section == "Resources":
            assert {MANAGED, "CapacityProvider", "PrivateSubnetC"} <= added
    managed = transformed["Resources"][MANAGED]
    assert managed["Condition"] == "WithManagedInstances"
    for name in FUNCTIONS:
        assert "CapacityProviderConfig" not in transformed["Resources"][name]["Properties"]


def test_managed_function_reads_the_tree_from_its_image(template: dict[str, Any]) -> None:
    """Managed Instances functions take no VpcConfig (their network is the capacity provider's),
    and no AWS page says they can mount EFS: the tree comes in the image instead."""
    properties = function(template, MANAGED)
    assert template["Resources"][MANAGED]["Condition"] == "WithManagedInstances"
    assert properties["PackageType"] == "Image"
    assert properties["ImageUri"] == ref("ManagedImageUri")
    for absent in ("VpcConfig", "FileSystemConfigs", "CodeUri", "Runtime", "Handler"):
        assert absent not in properties, absent
    assert env(properties)["LAMBDATORCH_MODELS"] == f"{IMAGE_TREE}/models"
    assert env(properties)["LAMBDATORCH_LIBTORCH"] == f"{IMAGE_TREE}/python/torch/lib"
    assert properties["AutoPublishAlias"] == "live"  # Managed Instances run published versions
    assert (
        properties["Architectures"]
        == props(template, "CapacityProvider")["InstanceRequirements"]["Architectures"]
    )
    config = properties["CapacityProviderConfig"]
    assert get_att(config["Arn"]) == ("CapacityProvider", "Arn")
    assert config["ExecutionEnvironmentMemoryGiBPerVCpu"] == ref("ManagedMemoryGiBPerVCpu")
    assert config["PerExecutionEnvironmentMaxConcurrency"] == {
        "Fn::If": ["HasManagedMaxConcurrency", ref("ManagedMaxConcurrency"), ref("AWS::NoValue")]
    }
    params = template["Parameters"]
    memory = params["ManagedMemorySize"]
    assert properties["MemorySize"] == ref("ManagedMemorySize")
    assert (memory["MinValue"], memory["MaxValue"]) == (2048, 32768)
    assert params["ManagedMemoryGiBPerVCpu"]["AllowedValues"] == [2, 4, 8]
    concurrency = params["ManagedMaxConcurrency"]
    assert [concurrency[k] for k in ("Default", "MinValue", "MaxValue")] == [0, 0, 1600]
    assert re.fullmatch(params["ManagedImageUri"]["AllowedPattern"], IMAGE_URI)
    assert re.fullmatch(params["ManagedImageUri"]["AllowedPattern"], "")
    assert not re.fullmatch(params["ManagedImageUri"]["AllowedPattern"], "lambdatorch:latest")
    # Every parameter its versions are made of is in their description (see above).
    unversioned = (
        "Role",
        "FunctionUrlConfig",
        "ReservedConcurrentExecutions",
        "VersionDescription",
    )
    shaping = refs_in({k: v for k, v in properties.items() if k not in unversioned})
    assert shaping & set(params) <= refs_in(properties["VersionDescription"])


def test_managed_instances_need_their_image(template: dict[str, Any]) -> None:
    (rule_,) = template["Rules"].values()
    assert rule_["RuleCondition"] == {"Fn::Equals": [ref("ManagedInstances"), "true"]}
    (assertion,) = rule_["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [ref("ManagedImageUri"), ""]}]}


def test_capacity_provider_spans_three_azs_with_no_way_in_and_logs_out_only(
    template: dict[str, Any],
) -> None:
    provider = props(template, "CapacityProvider")
    subnets = [s["Ref"] for s in provider["VpcConfig"]["SubnetIds"]]
    assert subnets == ["PrivateSubnetA", "PrivateSubnetB", "PrivateSubnetC"]
    azs = {json.dumps(props(template, s)["AvailabilityZone"]) for s in subnets}
    assert len(azs) == 3
    # Its third subnet shares the private route table: no route out, as the others.
    (association,) = [
        a["Properties"]
        for a in resources_of(template, "AWS::EC2::SubnetRouteTableAssociation").values()
        if a["Properties"]["SubnetId"] == ref("PrivateSubnetC")
    ]
    assert association["RouteTableId"] == ref("PrivateRouteTable")
    cidrs = [json.dumps(props(template, s)["CidrBlock"]) for s in [*subnets, "LoaderSubnet"]]
    assert len(set(cidrs)) == 4
    (group_ref,) = provider["VpcConfig"]["SecurityGroupIds"]
    group = props(template, group_ref["Ref"])
    assert "SecurityGroupIngress" not in group
    (egress,) = group["SecurityGroupEgress"]
    assert rule(egress) == ("tcp", 443, 443)
    assert egress["DestinationSecurityGroupId"] == ref("LogsEndpointSecurityGroup")
    endpoint = props(template, "LogsEndpoint")
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.logs"}
    assert endpoint["SubnetIds"] == provider["VpcConfig"]["SubnetIds"]
    role = props(template, "CapacityProviderOperatorRole")
    assert get_att(provider["PermissionsConfig"]["CapacityProviderOperatorRoleArn"]) == (
        "CapacityProviderOperatorRole",
        "Arn",
    )
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"
    }
    operator = "arn:${AWS::Partition}:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"
    assert role["ManagedPolicyArns"] == [{"Fn::Sub": operator}]
    assert provider["CapacityProviderScalingConfig"]["MaxVCpuCount"] == ref("ManagedMaxVCpuCount")


def test_transformed_managed_function_is_a_managed_instances_function(
    template: dict[str, Any], aws_offline: None
) -> None:
    parameters = PARAMETER_SETS["managed-instances"]
    resources = sam_transform(template, **parameters)["Resources"]
    properties = resources[MANAGED]["Properties"]
    config = properties["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    assert get_att(config["CapacityProviderArn"]) == ("CapacityProvider", "Arn")
    assert "VpcConfig" not in properties and "FileSystemConfigs" not in properties
    assert properties["Code"] == {"ImageUri": IMAGE_URI}
    assert resources[f"{MANAGED}Aliaslive"]["Type"] == "AWS::Lambda::Alias"
    for name in FUNCTIONS:  # the EFS functions are there too, unchanged
        assert resources[name]["Properties"]["FileSystemConfigs"]
    assert condition_value(template, "PublicManagedUrl", parameters)
    assert not condition_value(template, "PublicManagedUrl", {"ManagedInstances": "true"})


# --- the README's commands against the template ---------------------------------------------------


@pytest.fixture(scope="module")
def deploy_section() -> str:
    text = README.read_text()
    start = text.index("\n## Deploy to AWS\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_reads_only_outputs_that_exist(
    template: dict[str, Any], deploy_section: str
) -> None:
    used = set(re.findall(r"\$\(out (\w+)\)", deploy_section))
    assert {"FileSystemId", "AccessPointId", "LoaderSecurityGroupId"} <= used
    assert used <= set(template["Outputs"]), used - set(template["Outputs"])


def test_readme_sets_only_parameters_that_exist(
    template: dict[str, Any], deploy_section: str
) -> None:
    overrides = set(re.findall(r"\b([A-Z][A-Za-z]+)=", deploy_section))
    # The other Name=value pairs: options of aws ec2 run-instances and aws ssm.
    overrides -= {"ResourceType", "Tags", "Key", "Value", "Values", "Name", "HttpTokens"}
    overrides -= {"DeviceName", "Ebs", "VolumeSize", "Encrypted", "OutputKey"}
    overrides = {o for o in overrides if not o.isupper()}  # shell variables are upper case
    assert {"TreeVersion", "DefaultModel"} <= overrides
    assert overrides <= set(template["Parameters"]), overrides - set(template["Parameters"])


def test_readme_shell_blocks_parse(deploy_section: str) -> None:
    """Every ```sh block of the section is valid bash (``bash -n``: parsed, not run)."""
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```$", deploy_section, flags=re.S | re.M)
    assert len(blocks) >= 8
    for block in blocks:
        result = subprocess.run(
            ["bash", "-n"], input=block, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{result.stderr}\n{block}"


def test_deploy_md_is_not_cited(deploy_section: str) -> None:
    """There is no deploy/DEPLOY.md: the README's "Deploy to AWS" section is the guide."""
    assert not (REPO / "deploy" / "DEPLOY.md").exists()
    for text in (TEMPLATE.read_text(), FILL_EFS.read_text(), deploy_section):
        assert "DEPLOY.md" not in text


def test_readme_runs_the_loader_script_the_repository_has(deploy_section: str) -> None:
    assert "deploy/fill_efs.sh" in deploy_section
    assert "-o tls,iam" in deploy_section or "tls,iam" in FILL_EFS.read_text()
    assert "make wheel" in deploy_section and "make lambda-zip" in deploy_section


# --- deploy/fill_efs.sh against a local directory -------------------------------------------------

SITE = Path(sysconfig.get_paths()["purelib"])


@pytest.fixture(scope="module")
def wheel() -> Path:
    wheels = sorted((REPO / "dist").glob("lambdatorch-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in dist/, found {wheels} (run make wheel)"
    return wheels[0]


@pytest.fixture
def artifacts(tmp_path: Path, wheel: Path) -> Path:
    """What the README uploads to s3://BUCKET/lambdatorch/: the wheel and one model directory."""
    from fixture_data import MODELS

    root = tmp_path / "artifacts"
    (root / "wheels").mkdir(parents=True)
    shutil.copy2(wheel, root / "wheels")
    shutil.copytree(MODELS / "tiny", root / "models" / "tiny")
    return root


@pytest.fixture
def efs_root(tmp_path: Path) -> Path:
    """The tree before the first run, except for torch: PyTorch's CPU wheel index is out of reach
    here, and PyPI's build is GBs, so torch is linked from the venv (as ``demo/build_efs.py`` does)
    and the script must see that the version it wants is already there."""
    root = tmp_path / "efs"
    (root / "python").mkdir(parents=True)
    for package in ("torch", "nvidia"):
        if (SITE / package).exists():
            (root / "python" / package).symlink_to(SITE / package, target_is_directory=True)
    return root


def fill_efs(root: Path, artifacts: Path, **extra: str) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(root)),
        "LT_ROOT": str(root),
        "LT_ARTIFACTS": str(artifacts),
        "LT_PYTHON": sys.executable,
        **extra,
    }
    return subprocess.run(
        ["bash", str(FILL_EFS)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )


def test_fill_efs_lays_out_the_tree_and_doctor_passes(efs_root: Path, artifacts: Path) -> None:
    out = fill_efs(efs_root, artifacts)
    assert out.returncode == 0, out.stdout + out.stderr
    python = efs_root / "python"
    assert list((python / "lambdatorch").glob("_core*.so"))
    assert list(python.glob("lambdatorch-*.dist-info"))
    assert (python / "numpy" / "__init__.py").is_file()  # the wheel's dependency, installed beside
    assert "torch 2.13.0 already in" in out.stdout  # not downloaded again
    assert (efs_root / "models" / "tiny" / "manifest.json").is_file()
    assert sorted(p.name for p in efs_root.iterdir()) == ["models", "python"]  # nothing partial
    doctor = out.stdout.split("lambdatorch doctor --root", 1)[1].splitlines()[1:]
    assert doctor and all(line.startswith("ok ") for line in doctor), doctor
    assert any("models/tiny" in line for line in doctor)


def test_fill_efs_again_changes_no_model_and_refuses_to_overwrite_one(
    efs_root: Path, artifacts: Path
) -> None:
    assert fill_efs(efs_root, artifacts).returncode == 0
    again = fill_efs(efs_root, artifacts)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "model tiny unchanged" in again.stdout

    before = (efs_root / "models" / "tiny" / "labels.txt").read_bytes()
    (artifacts / "models" / "tiny" / "labels.txt").write_text("a different label\n")
    changed = fill_efs(efs_root, artifacts)
    assert changed.returncode != 0
    assert "never overwritten" in changed.stderr
    assert "install lambdatorch" not in changed.stdout  # refused before anything was written
    assert (efs_root / "models" / "tiny" / "labels.txt").read_bytes() == before


def test_fill_efs_installs_torch_when_the_tree_has_another_version(
    efs_root: Path, artifacts: Path, tmp_path: Path
) -> None:
    """The torch step is real: asked for a version the tree lacks, it goes to the index (here an
    empty local one, so pip fails and the script stops before touching models/)."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    out = fill_efs(
        efs_root,
        artifacts,
        LT_TORCH_VERSION="2.99.0",
        PIP_NO_INDEX="1",  # pip's own variables: no index, a local directory of wheels
        PIP_FIND_LINKS=str(empty),
        PIP_NO_DEPS="1",
    )
    assert out.returncode != 0
    assert "install torch==2.99.0 (2.13.0) from https://download.pytorch.org/whl/cpu" in out.stdout
    assert not (efs_root / "models" / "tiny").exists()


def test_fill_efs_wants_exactly_one_wheel(efs_root: Path, artifacts: Path) -> None:
    (wheel,) = (artifacts / "wheels").iterdir()
    shutil.copy2(wheel, wheel.with_name(wheel.name.replace("lambdatorch-", "lambdatorch-0")))
    out = fill_efs(efs_root, artifacts)
    assert out.returncode != 0
    assert "expected one wheels/lambdatorch-*.whl" in out.stderr
    assert not (efs_root / "python" / "lambdatorch").exists()


STUB = """#!/usr/bin/env bash
# Stand-in for `{name}` on the loader instance: records its arguments, then {does}.
printf '%s\\n' "{name} $*" >> "$STUB_LOG"
{body}
"""


def stub(bin_dir: Path, name: str, does: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(STUB.format(name=name, does=does, body=body))
    path.chmod(0o755)


def test_fill_efs_on_the_instance_mounts_with_tls_and_iam_and_reads_s3(
    efs_root: Path, artifacts: Path, tmp_path: Path
) -> None:
    """What only the instance has (the EFS mount helper, the AWS CLI) is replaced by stand-ins that
    record how they are called; everything else runs as in the other tests."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub(bin_dir, "mount.efs", "does nothing (its presence spares the dnf install)", "exit 0")
    stub(bin_dir, "mountpoint", "says the directory is not mounted yet", "exit 1")
    stub(bin_dir, "mount", "succeeds (the tree is a local directory)", "exit 0")
    # `aws s3 cp --recursive --only-show-errors s3://BUCKET/PREFIX/ DEST/`: copies the artifacts.
    stub(bin_dir, "aws", "copies the local artifacts", f'cp -R "{artifacts}/." "${{@: -1}}"')
    out = fill_efs(
        efs_root,
        tmp_path / "not-used",
        LT_ARTIFACTS="s3://my-bucket/lambdatorch",
        LT_FILE_SYSTEM_ID="fs-0123456789abcdef0",
        LT_ACCESS_POINT_ID="fsap-0123456789abcdef0",
        STUB_LOG=str(log),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    calls = log.read_text().splitlines()
    assert f"mountpoint -q {efs_root}" in calls
    assert (
        "mount -t efs -o tls,iam,accesspoint=fsap-0123456789abcdef0 fs-0123456789abcdef0:/ "
        f"{efs_root}"
    ) in calls
    (copy,) = [c for c in calls if c.startswith("aws ")]
    assert copy.startswith("aws s3 cp --recursive --only-show-errors s3://my-bucket/lambdatorch/ ")
    assert (efs_root / "models" / "tiny" / "manifest.json").is_file()
    assert list((efs_root / "python" / "lambdatorch").glob("_core*.so"))
