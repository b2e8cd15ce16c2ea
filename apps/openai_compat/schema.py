"""OpenAPI security scheme of the Bearer API key (drf-spectacular extension)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apps.openai_compat.authentication.BearerApiKeyAuthentication"
    name = "openaiBearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An organisation API key (`lxk_...`) or a user's access token, as "
            "OpenAI SDKs send it: `Authorization: Bearer <key>`.",
        }
