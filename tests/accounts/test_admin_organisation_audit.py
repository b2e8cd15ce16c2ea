"""An operator's change to an organisation in the admin (deactivation, plan, name) is recorded in
its audit trail, as the API's changes are (tests/accounts/test_organisation_deactivation.py has
the rest of deactivation)."""

from __future__ import annotations

from apps.accounts.models import Organisation
from apps.audit.models import AuditAction, AuditEvent
from tests.factories import OrganisationFactory


def test_deactivating_organisations_from_the_list_is_audited(admin_client, db):
    active = OrganisationFactory()
    inactive = OrganisationFactory(is_active=False)

    response = admin_client.post(
        "/admin/accounts/organisation/",
        {"action": "deactivate_organisations", "_selected_action": [active.pk, inactive.pk]},
    )

    assert response.status_code == 302
    active.refresh_from_db()
    assert not active.is_active
    event = AuditEvent.objects.get()  # organisation_deactivate's own action, not an update
    assert event.action == AuditAction.ORGANISATION_DEACTIVATED
    assert event.organisation_id == active.pk
    assert event.actor.is_superuser
    assert event.metadata == {"jobs_cancelled": 0, "jobs_stopping": 0}


def test_changing_an_organisations_plan_in_the_form_is_audited(admin_client, db):
    organisation = OrganisationFactory(plan="free")

    response = admin_client.post(
        f"/admin/accounts/organisation/{organisation.pk}/change/",
        {"name": organisation.name, "plan": "team", "share_links_enabled": "on"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Organisation.objects.get(pk=organisation.pk).plan == "team"
    event = AuditEvent.objects.get(action=AuditAction.ORGANISATION_UPDATED)
    assert event.organisation_id == organisation.pk
    assert event.metadata == {"plan": ["free", "team"], "via": "admin"}
