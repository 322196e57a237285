"""AWS clients as a cluster node makes them. botocore finds a region in the environment and
~/.aws/config only: on an EC2 node started without either (a job whose submitter keeps the region
in ~/.aws/config on a laptop), `boto3.client("secretsmanager")` fails with NoRegionError. A node
knows its region from its instance identity document, so that is where the region comes from
when the settings name none."""

from __future__ import annotations

import json

from dfdc import imds


class NoRegion(RuntimeError):
    """Neither the settings nor an instance metadata service say which region this is."""


def region() -> str:
    """The region: AWS_REGION, AWS_DEFAULT_REGION or the profile's `region` (as botocore reads
    them), else the instance identity document's (one local request)."""
    import botocore.session  # noqa: PLC0415

    configured = botocore.session.get_session().get_config_variable("region")
    if configured:
        return configured
    try:
        document = imds.Metadata().get(imds.IDENTITY)
    except imds.MetadataUnavailable as e:
        raise NoRegion(f"no AWS region: set AWS_REGION (or a profile's region), or run on EC2 ({e})") from e
    try:
        return json.loads(document or "")["region"]
    except (ValueError, KeyError, TypeError) as e:
        raise NoRegion(f"no AWS region: the instance identity document at {imds.endpoint()}{imds.IDENTITY} has none ({e})") from e


def client(service: str):
    """A boto3 client for `service` in this node's region (see `region`)."""
    import boto3  # noqa: PLC0415

    return boto3.client(service, region_name=region())
