"""Notifications from the Dagster side: the daemon delivers them whether or not the portal runs."""

import dagster as dg

from optiinfra_assets.notifications import Notifier
from resources.dagster_resources import StateStoreResource

# A tick starts no new event after this long, staying under Dagster's 60 s sensor evaluation timeout
# (a dead channel costs ~16 s: 3 attempts of up to 5 s); what it had no time for, the next tick sends.
TICK_BUDGET_S = 35.0


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def notifications_sensor(
    context: dg.SensorEvaluationContext, state_store: StateStoreResource
) -> dg.SkipReason:
    """Send what is due to each customer's channels: decisions needed, approvals, rollbacks, escalations,
    and the anomalies and budget alerts the analysis pass recorded. Each (channel, event) is claimed before
    it is sent, so this sensor and the portal's own loop never both send one; a failure is recorded on
    the delivery (``GET /api/customers/{id}/deliveries``) and logged here."""
    deliveries = Notifier(state_store.get()).poll(budget_s=TICK_BUDGET_S)
    failed = [d for d in deliveries if d.status == "failed"]
    for d in failed:
        context.log.warning(
            f"notification {d.event_key} to channel {d.channel_id} of {d.customer_id} failed after "
            f"{d.attempts} attempts: {d.last_error}"
        )
    return dg.SkipReason(f"{len(deliveries) - len(failed)} notifications delivered, {len(failed)} failed")
