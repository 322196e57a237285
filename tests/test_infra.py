"""infra/: the CloudFormation stack passes cfn-lint and checkov, deploys to moto's server on
127.0.0.1, and reads back as built; its IAM policies are evaluated, case by case, by moto's own
policy evaluator (and enforced by its S3 for the worker role); the Dockerfile passes hadolint.

moto's CloudFormation skips AWS::S3::BucketPolicy, AWS::EC2::SecurityGroupEgress and
AWS::SecretsManager::Secret, and ignores a bucket's versioning, public access block and lifecycle:
those are checked in the template itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "infra" / "cloudformation" / "dfdc.yaml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
LINT = ROOT / ".venv-lint" / "bin"
BUCKET = "dfdc-test-data"
REGION = "us-east-1"
ADMIN = "203.0.113.7/32"


def lint_tool(name: str) -> str:
    path = LINT / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make install` sets up the linters' environment (.venv-lint)")
    return str(path)


def checkov(path: Path, framework: str) -> subprocess.CompletedProcess:
    """checkov's JSON report on `path`, named relative to the repository. Its CKV_AWS_46 (secrets in
    EC2 user data) scans the user data as a string that holds the file's path, and a path whose part
    before `.yaml` is 40 characters of [A-Za-z0-9/+=] matches its AWS-secret-key pattern: a clone at
    /tmp/fresh41/p failed on its own template. Relative, the path is the same in every clone."""
    return subprocess.run([lint_tool("checkov"), "-f", str(path.resolve().relative_to(ROOT.resolve())), "--framework", framework,
                           "--compact", "--quiet", "--skip-download", "--output", "json"], capture_output=True, text=True, cwd=ROOT)


def template() -> dict:
    """The template as CloudFormation reads it (its short forms are written out in full here)."""
    return yaml.safe_load(TEMPLATE.read_text())


def resources_of(t: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in t["Resources"].items() if r["Type"] == kind}


# ---- linters ----

def test_cfn_lint_passes():
    out = subprocess.run([lint_tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkov_passes_and_every_skip_has_a_reason():
    out = checkov(TEMPLATE, "cloudformation")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["summary"]["failed"] == 0, out.stdout[-3000:]
    assert report["summary"]["passed"] > 40  # it did look at the template
    for r in template()["Resources"].values():
        for skip in r.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 40, skip


def test_checkov_can_fail():
    """The same scan refuses a bucket that is public and unencrypted."""
    t = template()
    t["Resources"]["DataBucket"]["Properties"].pop("PublicAccessBlockConfiguration")
    t["Resources"]["DataBucket"]["Properties"].pop("BucketEncryption")
    bad = Path(__file__).parent / ".." / ".pytest_cache" / "bad-template.yaml"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(yaml.safe_dump(t))
    out = checkov(bad, "cloudformation")
    assert json.loads(out.stdout)["summary"]["failed"] >= 2


def test_hadolint_passes():
    out = subprocess.run([lint_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkov_passes_on_the_dockerfile_and_every_skip_has_a_reason():
    out = checkov(DOCKERFILE, "dockerfile")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["summary"]["failed"] == 0, out.stdout[-3000:]
    assert report["summary"]["passed"] > 20  # it did look at the file
    skips = re.findall(r"#\s*checkov:skip=(\S+)\s*(.*)", DOCKERFILE.read_text())
    assert all(len(reason) > 40 for _, reason in skips), skips


# Accounts of ubuntu:24.04, which nvidia/cuda's ubuntu24.04 images are built on: since Ubuntu 23.04
# the image has a user `ubuntu` with uid and gid 1000, and its home.
UBUNTU_2404_ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
              "ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n",
    "group": "root:x:0:\nusers:x:100:\nnogroup:x:65534:\nubuntu:x:1000:\n",
    "shadow": "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nubuntu:!:19000:0:99999:7:::\n",
    "gshadow": "root:*::\nusers:*::\nnogroup:*::\nubuntu:!::\n",
}


def test_the_images_user_steps_work_on_the_base_images_accounts(tmp_path):
    """The Dockerfile's account steps (useradd, userdel, ...), run with `--prefix` against the base
    image's accounts: a build stops at the first that fails (`useradd --uid 1000` when uid 1000 is
    taken), and the image's USER must be an account that is not root. Where no Docker daemon builds
    the image, this is the check that the build would get past them."""
    import os
    import shlex

    if os.geteuid() != 0:
        pytest.skip("useradd --prefix needs root")
    (tmp_path / "etc").mkdir()
    for name, text in UBUNTU_2404_ACCOUNTS.items():
        (tmp_path / "etc" / name).write_text(text)
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", tmp_path / "etc" / "login.defs")
    (tmp_path / "home" / "ubuntu").mkdir(parents=True)
    os.chown(tmp_path / "home" / "ubuntu", 1000, 1000)

    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ")]
    steps = [r for r in runs if re.search(r"\b(useradd|userdel|usermod|groupadd|groupdel|groupmod)\b", r)]
    assert steps, "the Dockerfile makes no user: the image would run as root"
    for step in steps:
        step = re.sub(r"\b(useradd|userdel|usermod|groupadd|groupdel|groupmod)\b", rf"\1 --prefix {shlex.quote(str(tmp_path))}", step)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", step], capture_output=True, text=True)
        assert done.returncode == 0, f"RUN {step}: exit {done.returncode}: {done.stderr}"
    [user] = re.findall(r"^USER\s+(\S+)", text, re.M)
    accounts = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    [account] = [a for a in accounts if user in (a[0], a[2])]
    assert account[2] != "0" and (tmp_path / account[5].lstrip("/")).is_dir(), account


def test_docker_build_where_docker_runs():
    """The image is built only where a Docker daemon answers (not on the machine CI ran on so far)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon here: the image was not built")
    out = subprocess.run([docker, "build", "-f", str(DOCKERFILE), "-t", "dfdc-scale:test", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


# ---- what moto cannot deploy, checked in the template ----

def references(node) -> set[str]:
    """The logical ids a template value refers to: Ref, Fn::GetAtt, and ${X} or ${X.Attr} in Fn::Sub
    (not ${AWS::...} pseudo parameters nor ${!...} literals)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                local = set(variables)
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)} - local
                found |= references(variables)
            else:
                found |= references(value)
    elif isinstance(node, list):
        for value in node:
            found |= references(value)
    return {r for r in found if not r.startswith("AWS::")}


def dependencies(t: dict) -> dict[str, set[str]]:
    """Each resource's direct dependencies, as CloudFormation orders creation: what its properties
    refer to, and DependsOn (parameters dropped)."""
    resources = t["Resources"]
    out = {}
    for name, r in resources.items():
        depends = r.get("DependsOn", [])
        deps = references(r.get("Properties", {})) | set([depends] if isinstance(depends, str) else depends)
        out[name] = {d for d in deps if d in resources}
    return out


ATTACHMENTS = ("AWS::EC2::VolumeAttachment", "AWS::EC2::NetworkInterfaceAttachment", "AWS::EC2::EIPAssociation")


def creation_order_problems(t: dict) -> list[str]:
    """What keeps the stack from ever being created, as CloudFormation creates it: a cycle, or an
    instance with a CreationPolicy whose boot script needs something CloudFormation makes only after
    the instance has signalled. CloudFormation creates a resource once every resource it depends on
    is complete, and a resource with a CreationPolicy is complete only when its signal came. An
    instance's boot needs what its UserData names, and an attachment to it whose device the
    UserData waits for."""
    deps = dependencies(t)
    after: dict[str, set[str]] = {}  # resources created only after this one is complete

    def dependents(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name in after:
            return after[name]
        direct = {d for d, ds in deps.items() if name in ds}
        assert name not in seen, f"a dependency cycle through {sorted(seen)}"
        out = set(direct)
        for d in direct:
            out |= dependents(d, seen | {name})
        after[name] = out
        return out

    problems = []
    for name, r in t["Resources"].items():
        if r["Type"] != "AWS::EC2::Instance" or "CreationPolicy" not in r:
            continue
        user_data = json.dumps(r["Properties"].get("UserData", ""))
        needs = references(r["Properties"].get("UserData", {}))
        needs |= {a for a, ar in t["Resources"].items() if ar["Type"] in ATTACHMENTS
                  and name in references(ar["Properties"].get("InstanceId", {}))
                  and ar["Properties"].get("Device", "\0") in user_data}
        for late in sorted(needs & dependents(name)):
            problems.append(f"{name} waits at boot for {late}, which CloudFormation creates only after {name}'s signal")
    return problems


def test_the_stack_can_be_created_in_cloudformations_order():
    """moto ignores creation policies, so its CREATE_COMPLETE proves nothing about this."""
    assert creation_order_problems(template()) == []


def test_the_creation_order_check_knows_a_creation_policy():
    """An instance that waits at boot for a volume attached to it by a separate resource can never
    signal: the attachment waits for the signal."""
    t = template()
    t["Resources"]["Box"] = {"Type": "AWS::EC2::Instance", "CreationPolicy": {"ResourceSignal": {"Timeout": "PT5M"}},
                             "Properties": {"UserData": {"Fn::Base64": {"Fn::Sub": "wait for /dev/sdg; cfn-signal ${AWS::StackName}"}}}}
    t["Resources"]["Disk"] = {"Type": "AWS::EC2::Volume", "Properties": {"Size": 1}}
    t["Resources"]["DiskOnBox"] = {"Type": "AWS::EC2::VolumeAttachment",
                                   "Properties": {"InstanceId": {"Ref": "Box"}, "VolumeId": {"Ref": "Disk"}, "Device": "/dev/sdg"}}
    assert creation_order_problems(t) == ["Box waits at boot for DiskOnBox, which CloudFormation creates only after Box's signal"]
    del t["Resources"]["Box"]["CreationPolicy"]  # no signal to wait for: the attachment follows the instance's start
    assert creation_order_problems(t) == []


def expired_by(key: str) -> list[str]:
    """The bucket's lifecycle rules (prefix parameters at their defaults) that delete a current
    object at `key`."""
    t = template()
    defaults = {name: p.get("Default") for name, p in t["Parameters"].items()}
    hits = []
    for rule in t["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]:
        if rule["Status"] != "Enabled" or not ("ExpirationInDays" in rule or "ExpirationDate" in rule):
            continue
        prefix = rule.get("Prefix", "")
        if isinstance(prefix, dict):
            prefix = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], prefix["Fn::Sub"])
        if key.startswith(prefix):
            hits.append(rule["Id"])
    return hits


def test_a_registered_model_is_kept_where_no_lifecycle_rule_expires_it(s3_server, tmp_path):
    """A sweep registers a trial's model; a year later models:/NAME/N must still resolve to a file.
    The runs' prefix expires (checkpoints, and the run's model with them): the file the version's
    tag names must lie elsewhere. Bucket `test` stands for the stack's, its runs under runs/."""
    import io
    import secrets

    import mlflow
    import torch

    from cluster.sweep import register
    from dfdc import storage
    from dfdc.config import load_config
    from train.model import file as model_file

    cfg = load_config(None, [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifacts={(tmp_path / 'art').as_uri()}",
                             "ray.storage_path=s3://test/runs", "model.name=test_efficientnet", "data.image_size=48"])
    trained = f"s3://test/runs/trial-{secrets.token_hex(4)}/model_fp32.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    storage.write_bytes(trained, buf.getvalue())
    model_file.write_card(trained, model_file.make_card(cfg, temperature=1.3))
    assert expired_by(trained.removeprefix("s3://test/")) == ["expire-old-runs"]  # as the run's own files are

    client = mlflow.MlflowClient(cfg.tracking.uri)
    run = client.create_run(client.create_experiment("registry", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    uri = register(cfg, "kept-detector", trained, run, "sweep-x")
    kept = model_file.resolve(uri, cfg.tracking.uri)
    assert kept.startswith("s3://test/") and expired_by(kept.removeprefix("s3://test/")) == [], kept
    assert storage.read_bytes(kept) == buf.getvalue() and model_file.read_card(kept)["temperature"] == 1.3
    storage.filesystem(trained)[0].rm(storage.filesystem(trained)[1])  # the lifecycle rule deleted the run's model
    assert model_file.resolve(uri, cfg.tracking.uri) == kept and storage.exists(kept)


def test_bucket_settings_in_the_template():
    t = template()
    bucket = t["Resources"]["DataBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"][k] for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7
    assert rules["expire-old-runs"]["Prefix"] == {"Fn::Sub": "${RunsPrefix}/"}
    assert rules["expire-old-runs"]["ExpirationInDays"] == {"Ref": "CheckpointExpiryDays"}
    assert rules["raw-videos-to-infrequent-access"]["Prefix"] == {"Fn::Sub": "${RawPrefix}/"}
    assert rules["raw-videos-to-infrequent-access"]["Transitions"][0]["StorageClass"] == "STANDARD_IA"
    statements = {s["Sid"]: s for s in t["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]}
    autoscaler = {s["Sid"]: s for s in t["Resources"]["HeadAutoscalerPolicy"]["Properties"]["PolicyDocument"]["Statement"]}
    assert autoscaler["TagAtLaunch"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    tls = statements["TlsOnly"]
    assert tls["Effect"] == "Deny" and tls["Principal"] == "*" and tls["Action"] == "s3:*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # The MLflow login is generated by Secrets Manager, never a parameter or a literal.
    secret = t["Resources"]["MlflowLogin"]["Properties"]
    assert secret["GenerateSecretString"]["GenerateStringKey"] == "password" and "SecretString" not in secret
    assert not any("Password" in name or "Secret" in name for name in t["Parameters"])


def test_no_ingress_from_the_internet_anywhere_in_the_template():
    t = template()
    text = json.dumps(t)
    rules = []
    for r in t["Resources"].values():
        if r["Type"] == "AWS::EC2::SecurityGroup":
            rules += r["Properties"].get("SecurityGroupIngress", [])
        elif r["Type"] == "AWS::EC2::SecurityGroupIngress":
            rules.append(r["Properties"])
    assert rules
    for rule in rules:
        assert rule.get("CidrIp") not in ("0.0.0.0/0",) and "CidrIpv6" not in rule, rule
    assert "::/0" not in text


# What EC2 accepts in a security group's and a rule's description (its API reference): no apostrophe.
EC2_DESCRIPTION = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}")


def test_security_groups_send_out_only_https_and_http_besides_their_own():
    """Egress open on every protocol lets a node send data anywhere: only HTTPS and HTTP go to the
    internet (moto skips SecurityGroupEgress resources: checked in the template). Descriptions use
    only the characters EC2 accepts (an apostrophe fails the stack on AWS; moto takes it)."""
    t = template()
    to_internet, described = [], []
    for name, r in t["Resources"].items():
        if not r["Type"].startswith("AWS::EC2::SecurityGroup"):
            continue
        p = r["Properties"]
        rules = p.get("SecurityGroupEgress", []) + ([p] if r["Type"] == "AWS::EC2::SecurityGroupEgress" else [])
        to_internet += [(name, x["IpProtocol"], x.get("FromPort"), x.get("ToPort")) for x in rules
                        if x.get("CidrIp") == "0.0.0.0/0" or x.get("CidrIpv6") == "::/0"]
        described += [(name, d) for d in [p.get("GroupDescription"), p.get("Description"),
                                          *[x.get("Description") for k in ("SecurityGroupIngress", "SecurityGroupEgress")
                                            for x in p.get(k, [])]] if d]
    assert to_internet and all(proto == "tcp" and lo == hi and lo in (80, 443) for _, proto, lo, hi in to_internet), to_internet
    assert [(n, d) for n, d in described if not EC2_DESCRIPTION.fullmatch(d)] == []


def test_admin_cidr_must_be_a_narrow_range():
    """CloudFormation matches AllowedPattern against the whole value."""
    import re

    pattern = re.compile(template()["Parameters"]["AdminCidr"]["AllowedPattern"])
    assert all(pattern.fullmatch(c) for c in ("203.0.113.7/32", "198.51.100.0/24", "10.1.0.0/16"))
    assert not any(pattern.fullmatch(c) for c in ("0.0.0.0/0", "1.2.3.4/0", "0.0.0.0/1", "10.0.0.0/8", "203.0.113.7", "::/0"))


def test_the_mlflow_server_runs_the_locked_mlflow():
    import tomllib

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    [mlflow] = [p["version"] for p in lock["package"] if p["name"] == "mlflow"]
    assert template()["Parameters"]["MlflowVersion"]["Default"] == mlflow


# ---- a deploy to moto's server ----

@pytest.fixture(scope="module")
def moto_aws():
    """A moto server of this module's own (its IAM enforcement is switched on and off here), with
    the stack deployed. (endpoint, client factory, stack outputs)."""
    import boto3
    from botocore.config import Config

    from tests.conftest import start_moto

    proc, endpoint = start_moto()
    admin = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

    def client(service, **creds):
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION, config=Config(retries={"max_attempts": 1}),
                            **(creds or admin))

    try:
        body = TEMPLATE.read_text()
        assert len(body.encode()) <= 51_200, "CloudFormation takes at most 51,200 bytes in a TemplateBody"
        cf = client("cloudformation")
        cf.create_stack(StackName="dfdc", TemplateBody=body, Capabilities=["CAPABILITY_NAMED_IAM"],
                        Parameters=[{"ParameterKey": "BucketName", "ParameterValue": BUCKET},
                                    {"ParameterKey": "AdminCidr", "ParameterValue": ADMIN}])
        stack = cf.describe_stacks(StackName="dfdc")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack
        yield endpoint, client, {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_stack_reads_back_as_built(moto_aws):
    _, client, out = moto_aws
    s3, ec2, iam = client("s3"), client("ec2"), client("iam")
    assert out["BucketName"] == BUCKET
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule["SSEAlgorithm"] == "aws:kms" and rule["KMSMasterKeyID"] == out["DataKeyArn"]

    # Network: private subnets in three zones, S3 through a gateway endpoint on the route tables.
    private = out["PrivateSubnets"].split(",")
    subnets = ec2.describe_subnets(SubnetIds=private)["Subnets"]
    assert len({s["AvailabilityZone"] for s in subnets}) == 3 and all(s["VpcId"] == out["VpcId"] for s in subnets)
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["VpcEndpoints"]
    assert [(e["ServiceName"], e["VpcEndpointType"]) for e in endpoints] == [(f"com.amazonaws.{REGION}.s3", "Gateway")]
    assert len(endpoints[0]["RouteTableIds"]) == 2

    # The security group: everything within itself, SSH from the admin's range, nothing from anywhere else.
    sg = out["ClusterSecurityGroup"]
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [sg]}])["SecurityGroupRules"]
    ingress = [r for r in rules if not r["IsEgress"]]
    assert {(r["IpProtocol"], r.get("FromPort"), r.get("CidrIpv4"), (r.get("ReferencedGroupInfo") or {}).get("GroupId"))
            for r in ingress} == {("tcp", 22, ADMIN, None), ("-1", -1, None, sg)}
    for group in ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])["SecurityGroups"]:
        for perm in group["IpPermissions"]:
            assert not any(r["CidrIp"] == "0.0.0.0/0" for r in perm.get("IpRanges", [])), group
            assert not any(r["CidrIpv6"] == "::/0" for r in perm.get("Ipv6Ranges", [])), group

    # Roles and instance profiles by the names the cluster configs use; the autoscaler policy on the head only.
    for profile, role in [("dfdc-ray-head", "dfdc-ray-head"), ("dfdc-ray-worker", "dfdc-ray-worker")]:
        assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]] == [role]
        assert out[f"{'Head' if 'head' in role else 'Worker'}InstanceProfileArn"].endswith(f":instance-profile/{profile}")
    attached = {role: sorted(p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])
                for role in ("dfdc-ray-head", "dfdc-ray-worker", "dfdc-mlflow")}
    assert attached == {"dfdc-ray-head": ["dfdc-node-data", "dfdc-ray-autoscaler"], "dfdc-ray-worker": ["dfdc-node-data"],
                        "dfdc-mlflow": ["dfdc-mlflow-server"]}
    assert all(not iam.list_role_policies(RoleName=role)["PolicyNames"] for role in attached)

    # MLflow: private subnet, IMDSv2 only, a group that admits port 5000 from the cluster only, its
    # tracking store on an encrypted volume of its own.
    mlflow = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["dfdc-mlflow"]}])["Reservations"][0]["Instances"][0]
    assert mlflow["SubnetId"] in private and not mlflow.get("PublicIpAddress")
    assert out["MlflowTrackingUri"] == f"http://{mlflow['PrivateIpAddress']}:5000"
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [physical(client, "MlflowSecurityGroup")]}])[
        "SecurityGroupRules"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], r["ReferencedGroupInfo"]["GroupId"]) for r in rules if not r["IsEgress"]] \
        == [("tcp", 5000, 5000, sg)]
    # Its data volume is in its zone, attached by its boot script (which moto does not run: see
    # test_the_mlflow_boot_script_attaches_the_volume_once_its_predecessor_lets_go).
    [volume] = ec2.describe_volumes(VolumeIds=[physical(client, "MlflowData")])["Volumes"]
    assert volume["AvailabilityZone"] == mlflow["Placement"]["AvailabilityZone"]
    resources = template()["Resources"]  # what moto's instances and volumes ignore
    assert resources["MlflowData"]["Properties"]["Encrypted"] is True
    server = resources["MlflowServer"]["Properties"]
    assert server["MetadataOptions"]["HttpTokens"] == "required" and server["SecurityGroupIds"] == [{"Ref": "MlflowSecurityGroup"}]
    assert all(b["Ebs"]["Encrypted"] for b in server["BlockDeviceMappings"])
    assert resources["MlflowData"]["DeletionPolicy"] == "Snapshot" and resources["DataKey"]["DeletionPolicy"] == "Retain"


def physical(client, logical: str) -> str:
    """The id of the stack's resource `logical`."""
    resources = client("cloudformation").list_stack_resources(StackName="dfdc")["StackResourceSummaries"]
    return next(r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"] == logical)


def role_policies(client, role: str) -> list[dict]:
    """The policy documents attached to `role` in the deployed stack, read back from IAM."""
    iam = client("iam")
    docs = []
    for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        version = iam.get_policy(PolicyArn=p["PolicyArn"])["Policy"]["DefaultVersionId"]
        doc = iam.get_policy_version(PolicyArn=p["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
        docs.append(json.loads(doc) if isinstance(doc, str) else doc)
    return docs


def bucket_policy_for_nodes() -> dict:
    """The bucket policy's statements about the nodes (moto does not deploy bucket policies), with
    the stack's names filled in. Its TLS-only statement is checked in the template: moto's evaluator
    reads a Bool condition as always true."""
    statement = next(s for s in template()["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                     if s["Sid"] == "NodesNeverDeleteRawVideos")
    return {"Version": "2012-10-17", "Statement": [{"Effect": statement["Effect"], "Action": statement["Action"],
                                                    "Resource": f"arn:aws:s3:::{BUCKET}/raw/*"}]}


def decide(docs: list[dict], action: str, resource: str, context: dict | None = None) -> str:
    """AWS's rule over a principal's policies: an explicit Deny statement that applies wins, else an
    Allow statement that applies. moto's evaluator decides one statement at a time here: over a whole
    document it answers DENIED when an Allow statement's condition is not met, where AWS would just
    not apply that statement (a CreateTags at launch was refused because the statement for existing
    instances did not match)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    allowed = False
    for doc in docs:
        for statement in doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]:
            one = json.dumps({"Version": doc.get("Version", "2012-10-17"), "Statement": [statement]})
            result = IAMPolicy(one).is_action_permitted(action, resource, None, context)
            if statement["Effect"] == "Deny" and result == PermissionResult.DENIED:
                return "deny"
            allowed |= statement["Effect"] == "Allow" and result == PermissionResult.PERMITTED
    return "allow" if allowed else "deny"


def s3(key: str, bucket: str = BUCKET) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def config_cases() -> list[tuple[str, str, str, str]]:
    """(role, action, object key, expected) for every S3 URL the recipes and the cluster configs
    name: what they read must be readable, what they write writable, by the nodes that run them."""
    from dfdc.config import load_config

    cases = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if "YOUR-BUCKET" not in path.read_text():
            continue  # the demos' local bucket
        cfg = load_config(path)

        def key(uri: str) -> str:
            assert uri.startswith("s3://YOUR-BUCKET/"), (path.name, uri)
            return uri.removeprefix("s3://YOUR-BUCKET/")

        reads = [f"{key(cfg.data.dataset)}/manifest.json", f"{key(cfg.data.dataset)}/shards/train/u-0000.tar"]
        reads += [f"{key(d)}/shards/val/u-0000.tar" for d in cfg.eval.datasets]
        if cfg.model.pretrained and cfg.model.pretrained.startswith("s3://"):
            reads.append(key(cfg.model.pretrained))
        run = f"{key(cfg.ray.storage_path)}/run-1/checkpoint_2026-01-01_00-00-00.000000/ds/mp_rank_00_model_states.pt"
        cases += [("dfdc-ray-worker", "s3:GetObject", k, "allow") for k in reads]
        cases += [("dfdc-ray-worker", a, run, "allow") for a in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject")]
        # Its ingest wrote the shards it trains on (raw videos under raw/).
        cases += [("dfdc-ray-worker", "s3:PutObject", f"{key(cfg.data.dataset)}/shards/train/u-0000.tar", "allow")]
    assert cases, "no recipe names the bucket"
    return cases


FIXED_CASES = [
    # (role, action, resource, expected, condition context)
    ("dfdc-ray-worker", "s3:GetObject", s3("raw/dfdc/dfdc_train_part_0/aaa.mp4"), "allow", None),
    ("dfdc-ray-worker", "s3:PutObject", s3("faces/dfdc/shards/train/u-0000.tar"), "allow", None),
    ("dfdc-ray-worker", "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", "allow", None),
    ("dfdc-ray-worker", "s3:DeleteObject", s3("raw/dfdc/dfdc_train_part_0/aaa.mp4"), "deny", None),
    ("dfdc-ray-head", "s3:DeleteObject", s3("raw/dfdc/dfdc_train_part_0/aaa.mp4"), "deny", None),
    ("dfdc-ray-worker", "s3:PutObject", s3("raw/dfdc/dfdc_train_part_0/aaa.mp4"), "deny", None),
    ("dfdc-ray-worker", "s3:DeleteObject", s3("faces/dfdc/shards/train/u-0000.tar"), "deny", None),
    ("dfdc-ray-worker", "s3:PutObject", s3("weights/tf_efficientnet_b7_ns.pth"), "deny", None),
    ("dfdc-ray-worker", "s3:GetObject", s3("mlflow/1/abc/artifacts/model.pt"), "deny", None),  # through the server only
    ("dfdc-ray-worker", "s3:GetObject", s3("other/secret.txt"), "deny", None),
    ("dfdc-ray-worker", "s3:GetObject", s3("faces/x.tar", bucket="someone-elses-bucket"), "deny", None),
    ("dfdc-ray-worker", "s3:ListBucket", "arn:aws:s3:::someone-elses-bucket", "deny", None),
    ("dfdc-ray-worker", "s3:DeleteBucket", f"arn:aws:s3:::{BUCKET}", "deny", None),
    ("dfdc-ray-worker", "s3:PutBucketPolicy", f"arn:aws:s3:::{BUCKET}", "deny", None),
    ("dfdc-ray-worker", "ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:instance/*", "deny",
     {"aws:RequestTag/ray-cluster-name": "dfdc-train"}),
    ("dfdc-ray-worker", "ec2:TerminateInstances", "arn:aws:ec2:us-east-1:123456789012:instance/i-0123",
     "deny", {"ec2:ResourceTag/ray-cluster-name": "dfdc-train"}),
    ("dfdc-ray-worker", "iam:PassRole", "arn:aws:iam::123456789012:role/dfdc-ray-worker", "deny", None),
    ("dfdc-ray-worker", "secretsmanager:GetSecretValue",
     "arn:aws:secretsmanager:us-east-1:123456789012:secret:dfdc/mlflow-login-AbC123", "allow", None),
    ("dfdc-ray-worker", "secretsmanager:GetSecretValue",
     "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/database-XyZ789", "deny", None),
    # The autoscaler, on the head only, over the clusters' own instances only.
    ("dfdc-ray-head", "ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:instance/*", "allow",
     {"aws:RequestTag/ray-cluster-name": "dfdc-train"}),
    ("dfdc-ray-head", "ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:instance/*", "allow",
     {"aws:RequestTag/ray-cluster-name": "dfdc-ingest"}),
    ("dfdc-ray-head", "ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:instance/*", "deny",
     {"aws:RequestTag/ray-cluster-name": "crypto-miner"}),
    ("dfdc-ray-head", "ec2:TerminateInstances", "arn:aws:ec2:us-east-1:123456789012:instance/i-0123", "allow",
     {"ec2:ResourceTag/ray-cluster-name": "dfdc-train"}),
    ("dfdc-ray-head", "ec2:TerminateInstances", "arn:aws:ec2:us-east-1:123456789012:instance/i-0123", "deny",
     {"ec2:ResourceTag/ray-cluster-name": "production-db"}),
    ("dfdc-ray-head", "ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-elsewhere", "deny", None),
    ("dfdc-ray-head", "iam:PassRole", "arn:aws:iam::123456789012:role/dfdc-ray-worker", "allow",
     {"iam:PassedToService": "ec2.amazonaws.com"}),
    ("dfdc-ray-head", "iam:PassRole", "arn:aws:iam::123456789012:role/dfdc-ray-head", "deny",
     {"iam:PassedToService": "ec2.amazonaws.com"}),
    ("dfdc-ray-head", "iam:PassRole", "arn:aws:iam::123456789012:role/Admin", "deny",
     {"iam:PassedToService": "ec2.amazonaws.com"}),
    ("dfdc-ray-head", "iam:CreateRole", "arn:aws:iam::123456789012:role/x", "deny", None),
    ("dfdc-ray-head", "ec2:AuthorizeSecurityGroupIngress", "arn:aws:ec2:us-east-1:123456789012:security-group/sg-1", "deny", None),
    # The MLflow server: its artifacts prefix, nothing else.
    ("dfdc-mlflow", "s3:PutObject", s3("mlflow/1/abc/artifacts/model.pt"), "allow", None),
    ("dfdc-mlflow", "s3:DeleteObject", s3("mlflow/1/abc/artifacts/model.pt"), "allow", None),
    ("dfdc-mlflow", "s3:GetObject", s3("raw/dfdc/dfdc_train_part_0/aaa.mp4"), "deny", None),
    ("dfdc-mlflow", "s3:GetObject", s3("runs/run-1/model.pt"), "deny", None),
]


@pytest.mark.parametrize("role,action,resource,expected,context", FIXED_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3]}-{i}" for i, c in enumerate(FIXED_CASES)])
def test_policy_decides(moto_aws, role, action, resource, expected, context):
    _, client, _ = moto_aws
    docs = role_policies(client, role) + ([bucket_policy_for_nodes()] if role.startswith("dfdc-ray") else [])
    assert decide(docs, action, resource, context) == expected


def test_the_mlflow_server_may_attach_its_data_volume_and_nothing_else(moto_aws):
    _, client, _ = moto_aws
    docs = role_policies(client, "dfdc-mlflow")
    volume = f"arn:aws:ec2:{REGION}:123456789012:volume/{physical(client, 'MlflowData')}"
    instance = f"arn:aws:ec2:{REGION}:123456789012:instance/i-0123456789abcdef0"
    ours = {"ec2:ResourceTag/aws:cloudformation:stack-name": "dfdc", "ec2:ResourceTag/aws:cloudformation:logical-id": "MlflowServer"}
    assert decide(docs, "ec2:AttachVolume", volume) == "allow"
    assert decide(docs, "ec2:AttachVolume", instance, ours) == "allow"
    assert decide(docs, "ec2:AttachVolume", f"arn:aws:ec2:{REGION}:123456789012:volume/vol-0another") == "deny"
    assert decide(docs, "ec2:AttachVolume", instance, ours | {"ec2:ResourceTag/aws:cloudformation:logical-id": "Other"}) == "deny"
    assert decide(docs, "ec2:AttachVolume", instance, ours | {"ec2:ResourceTag/aws:cloudformation:stack-name": "other"}) == "deny"
    assert decide(docs, "ec2:DetachVolume", volume) == "deny" and decide(docs, "ec2:DescribeVolumes", "*") == "allow"


def attach_volume_script() -> str:
    """The Python program the MLflow server's boot script writes to /opt/mlflow/attach_volume.py."""
    user_data = template()["Resources"]["MlflowServer"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    return re.search(r"attach_volume.py <<'EOF'\n(.*?)\nEOF\n", user_data, re.S).group(1)


def test_the_mlflow_boot_script_attaches_the_volume_once_its_predecessor_lets_go(moto_aws, tmp_path):
    """A replacement MLflow instance boots while the old one still holds the data volume (CloudFormation
    terminates the old one only after the new one's signal). The boot script's attach program, run
    as the new instance against moto's EC2 and a stand-in metadata service: --check says "held"
    (so the script signals first), then it waits, and attaches the volume once the old instance
    lets go; a volume that never comes free ends it with a message, not a hang."""
    import os
    import sys
    import time

    from tests.imds_standin import StandIn

    endpoint, client, _ = moto_aws
    ec2 = client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    old, new = (i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2,
                                                           Placement={"AvailabilityZone": f"{REGION}a"})["Instances"])
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=old, Device="/dev/sdf")
    program = tmp_path / "attach_volume.py"
    program.write_text(attach_volume_script())
    standin = StandIn()
    standin.values["/latest/meta-data/instance-id"] = new
    env = {**os.environ, "AWS_ENDPOINT_URL_EC2": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": standin.endpoint, "POLL_S": "0.2", "WAIT_S": "60"}
    env.pop("AWS_SESSION_TOKEN", None)
    argv = [sys.executable, str(program), volume, REGION, "/dev/sdf"]
    try:
        assert subprocess.run(argv + ["--check"], env=env, capture_output=True).returncode == 3
        waiting = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        assert waiting.poll() is None, waiting.communicate()[0]  # still waiting while the old one holds it
        ec2.detach_volume(VolumeId=volume, InstanceId=old)  # the old instance is terminated
        assert waiting.wait(30) == 0
        assert "is held by" in waiting.stdout.read()
        [found] = ec2.describe_volumes(VolumeIds=[volume])["Volumes"]
        assert [(a["InstanceId"], a["State"]) for a in found["Attachments"]] == [(new, "attached")]
        assert subprocess.run(argv + ["--check"], env=env).returncode == 0  # a reboot finds it attached

        standin.values["/latest/meta-data/instance-id"] = old  # an instance that never gets it
        stuck = subprocess.run(argv, env=env | {"WAIT_S": "1"}, capture_output=True, text=True, timeout=60)
        assert stuck.returncode == 1 and f"{volume} did not come free for this instance ({old})" in stuck.stderr
    finally:
        standin.stop()


def test_the_head_can_launch_a_cluster_node_and_nothing_else(moto_aws):
    """Every resource one RunInstances of Ray's touches, as Ray sends it: only the instance carries
    the ray-cluster-name tag. Job drivers run on the head with its role, so what it may launch is
    what the autoscaler launches: a worker of a configured type, from Amazon's or Canonical's images,
    into a private subnet and the cluster's group. Another type, another owner's image, the public
    subnet, another group, or untagged: refused. moto's evaluator counts a condition key missing
    from the context as met, so every case carries the keys AWS would send."""
    _, client, out = moto_aws
    docs = role_policies(client, "dfdc-ray-head")
    arn = "arn:aws:ec2:us-east-1:123456789012:"
    image = "arn:aws:ec2:us-east-1::image/ami-0abc"
    tagged = {"aws:RequestTag/ray-cluster-name": "dfdc-train", "ec2:InstanceType": "g5.12xlarge"}
    launch = [f"{arn}volume/*", f"{arn}network-interface/*", f"{arn}key-pair/ray-autoscaler_us-east-1",
              f"{arn}spot-instances-request/*", f"{arn}security-group/{out['ClusterSecurityGroup']}",
              *[f"{arn}subnet/{s}" for s in out["PrivateSubnets"].split(",")]]
    assert [r for r in launch if decide(docs, "ec2:RunInstances", r) != "allow"] == []
    assert decide(docs, "ec2:RunInstances", f"{arn}instance/*", tagged) == "allow"
    assert decide(docs, "ec2:RunInstances", image, {"ec2:Owner": "amazon"}) == "allow"
    assert decide(docs, "ec2:RunInstances", image, {"ec2:Owner": "099720109477"}) == "allow"  # Canonical's Ubuntu
    refused = [
        (f"{arn}instance/*", tagged | {"ec2:InstanceType": "p5en.48xlarge"}),  # a type no cluster config launches
        (f"{arn}instance/*", tagged | {"ec2:InstanceType": "m6i.2xlarge"}),  # the head's type: ray up starts heads
        (f"{arn}instance/*", tagged | {"aws:RequestTag/ray-cluster-name": "other"}),
        (image, {"ec2:Owner": "210987654321"}),  # somebody else's AMI
        (f"{arn}subnet/{out['PublicSubnet']}", None),
        (f"{arn}security-group/sg-0123456789abcdef0", None),
    ]
    assert [(r, c) for r, c in refused if decide(docs, "ec2:RunInstances", r, c) != "deny"] == []
    assert decide(role_policies(client, "dfdc-ray-worker"), "ec2:RunInstances", f"{arn}volume/*") == "deny"


def test_the_types_the_head_may_launch_are_the_cluster_configs_worker_types():
    from tests.test_cluster_configs import CONFIGS

    workers = set()
    for config in CONFIGS:
        c = yaml.safe_load(config.read_text())
        workers |= {t["node_config"]["InstanceType"] for name, t in c["available_node_types"].items() if name != c["head_node_type"]}
    assert set(template()["Parameters"]["NodeInstanceTypes"]["Default"].split(",")) == workers


def test_recipes_and_their_prefixes_are_allowed(moto_aws):
    """The B7 recipe's shards, pretrained weights, cross-dataset (Celeb-DF) shards and runs."""
    _, client, _ = moto_aws
    docs = role_policies(client, "dfdc-ray-worker") + [bucket_policy_for_nodes()]
    cases = config_cases()
    keys = " ".join(k for _, _, k, _ in cases)
    assert "weights/" in keys and "celebdf" in keys  # the B7 recipe is among them
    wrong = [(role, a, k) for role, a, k, expected in cases if decide(docs, a, s3(k)) != expected]
    assert not wrong, wrong


# How the docs and configs name the stack's bucket (s3://dfdc/... is the local stack's).
STACK_BUCKETS = ("YOUR-BUCKET", "my-bucket", "bucket")
WRITTEN_AFTER = re.compile(r"(--dest|--out|storage_path[:=])\s*$")


def documented_paths() -> list[tuple[str, str, str]]:
    """(file, key, s3 action) for every s3:// path in the README, docs/, infra/README.md and
    configs/ that names the stack's bucket: read (s3:GetObject on the object, or on one under a
    prefix), or written where a command's --dest or --out or a storage_path names it."""
    found = []
    for path in [ROOT / "README.md", ROOT / "infra" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                 *sorted((ROOT / "configs").glob("*.yaml"))]:
        text = path.read_text()
        for m in re.finditer(r"s3://([A-Za-z0-9.-]+)/([^\s`'\")\]]*)", text):
            bucket, key = m.group(1), m.group(2).rstrip(".,;:")
            if bucket not in STACK_BUCKETS or not key or key.startswith("..."):
                continue
            obj = key if re.search(r"\.[a-z0-9]{2,4}$", key) else key.rstrip("/") + "/x"
            written = WRITTEN_AFTER.search(text[max(0, m.start() - 40):m.start()])
            found.append((path.relative_to(ROOT).as_posix(), obj, "s3:PutObject" if written else "s3:GetObject"))
    return found


def test_every_s3_path_the_docs_and_configs_name_is_allowed_to_the_nodes(moto_aws):
    """A user copies these commands on the first day: each path must be one the stack's node roles
    may read (and write, where the command writes it), or the first command ends in AccessDenied."""
    _, client, _ = moto_aws
    docs = role_policies(client, "dfdc-ray-worker") + [bucket_policy_for_nodes()]
    paths = documented_paths()
    assert len(paths) > 20 and any(a == "s3:PutObject" for _, _, a in paths)  # it did find the docs' commands
    denied = [(f, key, action) for f, key, action in paths if decide(docs, action, s3(key)) != "allow"]
    assert not denied, denied


def test_the_data_key_decrypts_only_through_s3_and_secrets_manager(moto_aws):
    """Without the key grant every object read on AWS is denied (SSE-KMS): a node must be able to use
    it through S3 and Secrets Manager, and only that way. The context names the calling service as
    AWS does (moto counts a missing condition key as met)."""
    _, client, out = moto_aws
    key, other = out["DataKeyArn"], "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    for role in ("dfdc-ray-worker", "dfdc-ray-head", "dfdc-mlflow"):
        docs = role_policies(client, role)
        for action in ("kms:Decrypt", "kms:GenerateDataKey"):
            for service in ("s3", "secretsmanager"):
                assert decide(docs, action, key, {"kms:ViaService": f"{service}.us-east-1.amazonaws.com"}) == "allow", (role, action)
            assert decide(docs, action, key, {"kms:ViaService": "lambda.us-east-1.amazonaws.com"}) == "deny", role
            assert decide(docs, action, other, {"kms:ViaService": "s3.us-east-1.amazonaws.com"}) == "deny", role
    # Attaching its encrypted volume: a grant for EC2 (moto reads a Bool condition as met: checked in the template).
    mlflow = role_policies(client, "dfdc-mlflow")
    assert decide(mlflow, "kms:CreateGrant", key, {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}) == "allow"
    assert decide(mlflow, "kms:CreateGrant", key, {"kms:ViaService": "s3.us-east-1.amazonaws.com"}) == "deny"
    assert decide(role_policies(client, "dfdc-ray-worker"), "kms:CreateGrant", key, {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}) == "deny"
    grant = next(st for st in template()["Resources"]["MlflowPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                 if st["Action"] == "kms:CreateGrant")
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


def test_describe_and_tags_as_the_autoscaler_uses_them(moto_aws):
    """Describe* takes no resource: the head has them, the workers not. Tags only at launch or on the
    clusters' own instances. `ec2:CreateAction` is absent from a plain CreateTags on AWS; moto counts
    an absent key as met, so "" stands for absent here."""
    _, client, _ = moto_aws
    head, worker = role_policies(client, "dfdc-ray-head"), role_policies(client, "dfdc-ray-worker")
    arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    for action in ("ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeInstanceTypes"):
        assert decide(head, action, "*") == "allow" and decide(worker, action, "*") == "deny", action
    assert decide(head, "ec2:CreateTags", arn, {"ec2:CreateAction": "RunInstances", "ec2:ResourceTag/ray-cluster-name": ""}) == "allow"
    assert decide(head, "ec2:CreateTags", arn, {"ec2:CreateAction": "", "ec2:ResourceTag/ray-cluster-name": "dfdc-train"}) == "allow"
    assert decide(head, "ec2:CreateTags", arn, {"ec2:CreateAction": "", "ec2:ResourceTag/ray-cluster-name": ""}) == "deny"
    assert decide(head, "ec2:TerminateInstances", arn, {"ec2:ResourceTag/ray-cluster-name": "dfdc-ingest"}) == "allow"
    assert decide(head, "ec2:TerminateInstances", arn, {"ec2:ResourceTag/ray-cluster-name": ""}) == "deny"  # the MLflow server, say


def test_the_s3_endpoint_lets_through_only_the_data_bucket(moto_aws):
    """The gateway endpoint's policy (as the stack renders it): the data bucket, and Amazon Linux's
    package repositories for reading; another bucket of the region, not."""
    _, _, out = moto_aws
    statements = template()["Resources"]["S3GatewayEndpoint"]["Properties"]["PolicyDocument"]["Statement"]
    bucket_arn = f"arn:aws:s3:::{out['BucketName']}"

    def render(value):
        if isinstance(value, list):
            return [render(v) for v in value]
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            assert value["Fn::GetAtt"] == ["DataBucket", "Arn"], value
            return bucket_arn
        if isinstance(value, dict) and "Fn::Sub" in value:
            return (value["Fn::Sub"].replace("${DataBucket.Arn}", bucket_arn).replace("${AWS::Partition}", "aws")
                    .replace("${AWS::Region}", REGION))
        return value

    policy = {"Version": "2012-10-17", "Statement": [{k: render(v) for k, v in st.items() if k != "Principal"} for st in statements]}
    assert decide([policy], "s3:GetObject", f"{bucket_arn}/faces/x/shards/train/u-0000.tar") == "allow"
    assert decide([policy], "s3:PutObject", f"{bucket_arn}/runs/r/x") == "allow"
    assert decide([policy], "s3:GetObject", f"arn:aws:s3:::al2023-repos-{REGION}-de612dc2/core/mirrors/x") == "allow"
    assert decide([policy], "s3:PutObject", "arn:aws:s3:::somebody-elses-bucket/copy.tar") == "deny"
    assert decide([policy], "s3:PutObject", f"arn:aws:s3:::al2023-repos-{REGION}-de612dc2/x") == "deny"


def test_the_mlflow_server_lists_only_its_prefix():
    """s3:prefix is a StringLike condition, which moto's evaluator does not read: checked in the template."""
    statements = template()["Resources"]["MlflowPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    lists = [st for st in statements if "s3:ListBucket" in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])]
    assert lists and all(st["Condition"]["StringLike"]["s3:prefix"] == [{"Fn::Sub": "${MlflowPrefix}/*"}] for st in lists), lists


def test_the_evaluator_is_not_vacuous(moto_aws):
    """The evaluator refuses what a policy does not grant and grants what it does."""
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": s3("a/*")}]}
    assert decide([doc], "s3:GetObject", s3("a/x")) == "allow"
    assert decide([doc], "s3:GetObject", s3("b/x")) == "deny"
    assert decide([doc], "s3:PutObject", s3("a/x")) == "deny"


def test_moto_enforces_the_worker_role_on_s3(moto_aws):
    """The same policies, enforced by moto's S3 on real requests made with the worker role's
    temporary credentials."""
    import requests
    from botocore.exceptions import ClientError

    endpoint, client, _ = moto_aws
    admin_s3 = client("s3")
    admin_s3.put_object(Bucket=BUCKET, Key="raw/dfdc/a.mp4", Body=b"video")
    admin_s3.create_bucket(Bucket="someone-elses-bucket")
    admin_s3.put_object(Bucket="someone-elses-bucket", Key="k", Body=b"theirs")
    creds = client("sts").assume_role(RoleArn="arn:aws:iam::123456789012:role/dfdc-ray-worker", RoleSessionName="worker")["Credentials"]
    worker = client("s3", aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                    aws_session_token=creds["SessionToken"])
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        assert worker.get_object(Bucket=BUCKET, Key="raw/dfdc/a.mp4")["Body"].read() == b"video"
        worker.put_object(Bucket=BUCKET, Key="faces/dfdc/shards/train/u-0000.tar", Body=b"tar")
        worker.put_object(Bucket=BUCKET, Key="runs/r/checkpoint/x.pt", Body=b"ckpt")
        worker.delete_object(Bucket=BUCKET, Key="runs/r/checkpoint/x.pt")
        for call in (lambda: worker.put_object(Bucket=BUCKET, Key="raw/dfdc/a.mp4", Body=b"overwritten"),
                     lambda: worker.delete_object(Bucket=BUCKET, Key="raw/dfdc/a.mp4"),
                     lambda: worker.get_object(Bucket="someone-elses-bucket", Key="k"),
                     lambda: worker.get_object(Bucket=BUCKET, Key="mlflow/1/x")):
            with pytest.raises(ClientError) as e:
                call()
            assert e.value.response["Error"]["Code"] == "AccessDenied"
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_the_cluster_configs_point_at_what_the_stack_creates():
    """cluster/aws/ names the stack's instance profiles and cluster names, puts the head in the public
    subnet and the workers in the three private ones, and every node in the stack's security group."""
    t = template()
    profiles = {r["Properties"]["InstanceProfileName"] for r in resources_of(t, "AWS::IAM::InstanceProfile").values()}
    names = {t["Parameters"]["TrainClusterName"]["Default"], t["Parameters"]["IngestClusterName"]["Default"]}
    configs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "cluster" / "aws").glob("*.yaml")) if p.name != "prices.yaml"]
    assert {c["cluster_name"] for c in configs} == names
    for config in configs:
        for name, node in config["available_node_types"].items():
            nc = node["node_config"]
            head = name == config["head_node_type"]
            profile = nc["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
            assert profile in profiles and profile == ("dfdc-ray-head" if head else "dfdc-ray-worker"), (name, profile)
            assert nc["SecurityGroupIds"] == ["REPLACE-sg-dfdc-cluster"]
            assert nc["SubnetIds"] == (["REPLACE-subnet-public-a"] if head else
                                       ["REPLACE-subnet-private-a", "REPLACE-subnet-private-b", "REPLACE-subnet-private-c"])
    # The head's autoscaler may pass only the worker role, which is what the workers are launched with.
    passrole = next(s for s in t["Resources"]["HeadAutoscalerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                    if s["Action"] == "iam:PassRole")
    assert passrole["Resource"] == {"Fn::GetAtt": ["WorkerRole", "Arn"]}
