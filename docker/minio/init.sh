#!/bin/sh
# One-shot MinIO setup for docker-compose.yml (service minio-init, image minio/mc). Idempotent:
# safe to run on every `docker compose up`.
#   - creates the application's bucket, private (no anonymous access);
#   - creates the application's storage user (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) with a
#     policy limited to that bucket, so the application never holds the MinIO root credentials.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${AWS_STORAGE_BUCKET_NAME:?}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"
POLICY_NAME="lexiscore-app"

mc alias set lexiscore "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

mc mb --ignore-existing "lexiscore/$AWS_STORAGE_BUCKET_NAME"
mc anonymous set none "lexiscore/$AWS_STORAGE_BUCKET_NAME" >/dev/null

if [ "$AWS_ACCESS_KEY_ID" = "$MINIO_ROOT_USER" ]; then
    echo "minio-init: AWS_ACCESS_KEY_ID is the MinIO root user; use a separate storage user." >&2
    exit 1
fi

policy_file="/tmp/${POLICY_NAME}-policy.json"
trap 'rm -f "$policy_file"' EXIT
cat >"$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${AWS_STORAGE_BUCKET_NAME}"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::${AWS_STORAGE_BUCKET_NAME}/*"]
    }
  ]
}
EOF

mc admin policy create lexiscore "$POLICY_NAME" "$policy_file" >/dev/null
# `user add` on an existing user updates its secret key.
mc admin user add lexiscore "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
# Attaching an attached policy is an error that says "already in effect": that is success here.
if ! output="$(mc admin policy attach lexiscore "$POLICY_NAME" --user "$AWS_ACCESS_KEY_ID" 2>&1)"; then
    case "$output" in
        *"already in effect"*) ;;
        *) echo "$output" >&2; exit 1 ;;
    esac
fi

echo "minio-init: bucket $AWS_STORAGE_BUCKET_NAME and user $AWS_ACCESS_KEY_ID ready"
