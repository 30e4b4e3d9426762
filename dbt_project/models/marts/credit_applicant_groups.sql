-- One row per credit application with the applicant's protected attribute, kept apart from
-- credit_features (the Feast source) so no feature view, hence no model, can read it; the fairness
-- figures of training and the promotion gate join it on application_id. An unstated band is a
-- group of its own ('not_stated'), left out of the group comparisons rather than dropped silently.
with applications as (
    select * from {{ ref('stg_credit_applications') }}
)

select
    application_id::text as application_id,
    applied_at::timestamptz as applied_at,
    coalesce(age_band, 'not_stated')::text as age_band
from applications
