-- Argo CD health check for llmforge.dev/Evaluation (written for llmforge; see ../README.md).
-- Runs in Argo CD's sandbox: Lua 5.1, base and table libraries only (no string/math), `obj` is the resource.
--   deleting                                   -> Progressing
--   status missing, or for an older generation -> Progressing
--   Failed                                     -> Degraded
--   Succeeded and the gate failed (Passed=False) -> Degraded: a worse model must not look green
--   Succeeded and passed (or no gate)          -> Healthy
--   Suspended (spec.suspend)                   -> Suspended
--   Pending, WaitingForModel, Running          -> Progressing
local hs = { status = "Progressing", message = "Waiting for the llmforge operator to report status" }

local function find(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function explain(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then return reason .. ": " .. message end
  if message ~= nil and message ~= "" then return message end
  if reason ~= nil and reason ~= "" then return reason end
  return nil
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

local passed = find(st.conditions, "Passed")
local failed = find(st.conditions, "Failed")
local suspended = find(st.conditions, "Suspended")

if meta.generation ~= nil then
  local seen = st.observedGeneration
  if (seen ~= nil and seen ~= meta.generation)
      or (passed ~= nil and passed.observedGeneration ~= nil and passed.observedGeneration ~= meta.generation) then
    hs.message = "Waiting for the operator to observe generation " .. tostring(meta.generation)
    return hs
  end
end

if st.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  local why = nil
  if st.failure ~= nil then why = explain(st.failure.reason, st.failure.message) end
  if why == nil and failed ~= nil then why = explain(failed.reason, failed.message) end
  hs.message = "Failed: " .. (why or "see the Evaluation's events")
  return hs
end

if st.phase == "Succeeded" then
  if st.passed == false or (passed ~= nil and passed.status == "False") then
    hs.status = "Degraded"
    if st.failedThresholds ~= nil and #st.failedThresholds > 0 then
      hs.message = "Gate failed: " .. table.concat(st.failedThresholds, "; ")
    else
      hs.message = "Gate failed: " .. (explain(passed and passed.reason, passed and passed.message) or "see status")
    end
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Passed"
  if passed ~= nil then
    local why = explain(passed.reason, passed.message)
    if why ~= nil then hs.message = hs.message .. ": " .. why end
  end
  return hs
end

if st.phase == "Suspended" or (suspended ~= nil and suspended.status == "True") then
  hs.status = "Suspended"
  hs.message = "Suspended"
  return hs
end

hs.message = st.phase or "Pending"
if st.phase == "Running" and st.model ~= nil then
  hs.message = hs.message .. ": evaluating " .. st.model
end
if st.phase ~= "Running" then
  -- Say what it waits for: the first condition that is not yet True (the verdict and end states aside).
  for _, c in ipairs(st.conditions or {}) do
    if c.status ~= "True" and c.type ~= "Passed" and c.type ~= "Failed" and c.type ~= "Suspended" then
      local why = explain(c.reason, c.message)
      if why ~= nil then
        hs.message = hs.message .. ": " .. why
        break
      end
    end
  end
end
return hs
