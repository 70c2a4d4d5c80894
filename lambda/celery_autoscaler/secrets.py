"""The broker URL, from the config or read once from Secrets Manager.

The Terraform module keeps the URL (with its password) in a secret so it never appears in the
Lambda's environment; the secret may hold the bare URL or JSON ``{"url": "..."}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from celery_autoscaler.aws import client_config
from celery_autoscaler.config import BrokerConfig, ConfigError, parse_broker_url

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_FIELD = "broker.url_secret_arn"


def _url_from_secret(text: str, arn: str) -> str:
    """The URL in the secret's value, checked like ``broker.url``; errors name the secret, never its value."""
    text = text.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(_FIELD, f"secret {arn} looks like JSON but does not parse") from exc
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise ConfigError(_FIELD, f'secret {arn} JSON has no string "url" key')
        text = url.strip()
    try:
        parse_broker_url(text, _FIELD)
    except ConfigError as exc:
        raise ConfigError(_FIELD, f"secret {arn} does not hold a valid broker URL: {exc.message}") from None
    return text


def broker_url(broker: BrokerConfig, client: SecretsManagerClient | None = None) -> str:
    """The configured URL, or the one stored in ``broker.url_secret_arn`` (errors name that field)."""
    if broker.url is not None:
        return broker.url
    if broker.url_secret_arn is None:
        raise ConfigError("broker.url", "give exactly one of broker.url and broker.url_secret_arn")
    from botocore.exceptions import BotoCoreError, ClientError

    if client is None:
        import boto3

        client = boto3.client("secretsmanager", config=client_config())
    try:
        response = client.get_secret_value(SecretId=broker.url_secret_arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ConfigError(_FIELD, f"cannot read secret {broker.url_secret_arn}: {code}") from exc
    except BotoCoreError as exc:
        raise ConfigError(_FIELD, f"cannot read secret {broker.url_secret_arn}: {exc}") from exc
    if "SecretString" not in response:
        raise ConfigError(
            _FIELD, f"secret {broker.url_secret_arn} has no string value (binary secrets are not supported)"
        )
    return _url_from_secret(response["SecretString"], broker.url_secret_arn)
