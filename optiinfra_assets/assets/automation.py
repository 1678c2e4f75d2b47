"""When the analysis refreshes, declared once for every analysis asset (evaluated by automation_sensor)."""

import dagster as dg

# Every 15 minutes once its inputs have all updated since the tick; and at once whenever it has never been
# materialized and its inputs exist (the first start). Never a second run while one is in flight.
ANALYSIS_AUTOMATION = (
    (
        dg.AutomationCondition.on_cron("*/15 * * * *")
        | (dg.AutomationCondition.missing() & ~dg.AutomationCondition.any_deps_missing())
    )
    & ~dg.AutomationCondition.in_progress()
).with_label("every 15 minutes, or at once when missing")
