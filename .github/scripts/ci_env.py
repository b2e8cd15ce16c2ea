"""Print a .env for docker compose in CI: every secret freshly generated, nothing stored.

python .github/scripts/ci_env.py > .env
"""

import base64
import secrets


def token(length: int = 48) -> str:
    return secrets.token_urlsafe(length)


def main() -> None:
    postgres_password = token(24)
    values = {
        "DJANGO_SECRET_KEY": token(64),
        "JWT_SIGNING_KEY": token(48),
        # A Fernet key (what Fernet.generate_key() returns), without importing cryptography.
        "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "DJANGO_ALLOWED_HOSTS": "localhost",
        "PUBLIC_BASE_URL": "http://localhost:8000",
        "POSTGRES_PASSWORD": postgres_password,
        "DATABASE_URL": f"postgres://lexiscore:{postgres_password}@postgres:5432/lexiscore",
        "MINIO_ROOT_USER": "minio-root",
        "MINIO_ROOT_PASSWORD": token(24),
        "AWS_ACCESS_KEY_ID": "lexiscore-app",
        "AWS_SECRET_ACCESS_KEY": token(32),
        "EMAIL_URL": "smtp://localhost:25",
        "FLOWER_BASIC_AUTH": f"admin:{token(16)}",
    }
    for name, value in values.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
