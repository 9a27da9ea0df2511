-- Argo CD health check for llmforge.dev/FineTuneJob (written for llmforge; see ../README.md).
-- Runs in Argo CD's sandbox: Lua 5.1, base and table libraries only (no string/math), `obj` is the resource.
--   deleting                              -> Progressing
--   status missing, or for an older generation -> Progressing
--   Failed, or Validated=False (bad spec) -> Degraded
--   Succeeded (Complete=True)             -> Healthy
--   Suspended (spec.suspend)              -> Suspended
--   Pending, Running                      -> Progressing
local hs = { status = "Progressing", message = "Waiting for the llmforge operator to report status" }

local function find(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

-- "Reason: message", leaving out whatever is missing.
local function explain(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then return reason .. ": " .. message end
  if message ~= nil and message ~= "" then return message end
  if reason ~= nil and reason ~= "" then return reason end
  return nil
end

local function dollars(usd)
  local cents = usd * 100 + 0.5
  return "$" .. tostring((cents - cents % 1) / 100)
end

local meta = obj.metadata or {}
if meta.deletionTimestamp ~= nil then
  hs.message = "Pending deletion"
  if meta.finalizers ~= nil and #meta.finalizers > 0 then
    hs.message = hs.message .. "; waiting for finalizers: " .. table.concat(meta.finalizers, ", ")
  end
  return hs
end

local st = obj.status
if st == nil or (st.phase == nil and st.conditions == nil) then
  return hs
end

local failed = find(st.conditions, "Failed")
local complete = find(st.conditions, "Complete")
local suspended = find(st.conditions, "Suspended")
local validated = find(st.conditions, "Validated")

-- A status written for an older spec says nothing about the current one.
if meta.generation ~= nil then
  local seen = st.observedGeneration
  local key = complete or failed
  if (seen ~= nil and seen ~= meta.generation)
      or (key ~= nil and key.observedGeneration ~= nil and key.observedGeneration ~= meta.generation) then
    hs.message = "Waiting for the operator to observe generation " .. tostring(meta.generation)
    return hs
  end
end

if st.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  local why = nil
  if st.failure ~= nil then why = explain(st.failure.reason, st.failure.message) end
  if why == nil and failed ~= nil then why = explain(failed.reason, failed.message) end
  hs.message = "Failed: " .. (why or "see the FineTuneJob's events")
  return hs
end

if validated ~= nil and validated.status == "False" then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. (explain(validated.reason, validated.message) or "see the FineTuneJob's events")
  return hs
end

if st.phase == "Succeeded" or (complete ~= nil and complete.status == "True") then
  hs.status = "Healthy"
  hs.message = "Succeeded"
  if st.output ~= nil and st.output.adapterUri ~= nil then
    hs.message = hs.message .. ": adapter at " .. st.output.adapterUri
  end
  if st.cost ~= nil and st.cost.usd ~= nil then
    hs.message = hs.message .. " (cost " .. dollars(st.cost.usd) .. ")"
  end
  return hs
end

if st.phase == "Suspended" or (suspended ~= nil and suspended.status == "True") then
  hs.status = "Suspended"
  hs.message = "Suspended"
  if st.checkpoint ~= nil and st.checkpoint.step ~= nil then
    hs.message = hs.message .. "; resumes from the checkpoint at step " .. tostring(st.checkpoint.step)
  end
  return hs
end

if st.phase == "Running" then
  hs.message = "Running"
  if st.progress ~= nil and st.progress.summary ~= nil then
    hs.message = hs.message .. ": " .. st.progress.summary
  end
  return hs
end

hs.message = st.phase or "Pending"
local running = find(st.conditions, "Running")
local created = find(st.conditions, "JobCreated")
local why = nil
if running ~= nil and running.status ~= "True" then why = explain(running.reason, running.message) end
if why == nil and created ~= nil and created.status ~= "True" then why = explain(created.reason, created.message) end
if why ~= nil then hs.message = hs.message .. ": " .. why end
return hs
