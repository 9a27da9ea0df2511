-- Argo CD health check for llmforge.dev/ModelDeployment (written for llmforge; see ../README.md).
-- Runs in Argo CD's sandbox: Lua 5.1, base and table libraries only (no string/math), `obj` is the resource.
--   deleting                                   -> Progressing
--   status missing, or for an older generation -> Progressing
--   Degraded, or a canary rolled back          -> Degraded (as Argo Rollouts reports an aborted rollout)
--   Ready with a canary being promoted         -> Progressing (the new version is not fully out yet)
--   Ready                                      -> Healthy
--   Progressing                                -> Progressing
-- Without a phase, the Ready condition decides: True -> Healthy, False -> Degraded, Unknown -> Progressing.
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

local function is_true(c) return c ~= nil and c.status == "True" end

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

local ready = find(st.conditions, "Ready")
local available = find(st.conditions, "Available")
local promoting = find(st.conditions, "Promoting")
local rolledback = find(st.conditions, "RolledBack")

if meta.generation ~= nil then
  local seen = st.observedGeneration
  if (seen ~= nil and seen ~= meta.generation)
      or (ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration ~= meta.generation) then
    hs.message = "Waiting for the operator to observe generation " .. tostring(meta.generation)
    return hs
  end
end

local phase = st.phase
if phase == nil and ready ~= nil then
  if ready.status == "True" then phase = "Ready" elseif ready.status == "False" then phase = "Degraded" end
end

if is_true(rolledback) then
  hs.status = "Degraded"
  hs.message = "Canary rolled back: " .. (explain(rolledback.reason, rolledback.message) or "see promotionHistory")
  return hs
end

if phase == "Degraded" then
  hs.status = "Degraded"
  local why = nil
  if ready ~= nil and ready.status ~= "True" then why = explain(ready.reason, ready.message) end
  if why == nil and available ~= nil and available.status ~= "True" then
    why = explain(available.reason, available.message)
  end
  hs.message = "Degraded: " .. (why or "see the ModelDeployment's events")
  return hs
end

local replicas = ""
if st.ready ~= nil then replicas = " (" .. st.ready .. " replicas ready)" end

if phase == "Ready" then
  if is_true(promoting) then
    hs.message = "Promoting canary"
    if st.canaryWeight ~= nil then hs.message = hs.message .. " at " .. tostring(st.canaryWeight) .. "%" end
    local why = explain(promoting.reason, promoting.message)
    if why ~= nil then hs.message = hs.message .. ": " .. why end
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Ready" .. replicas
  if st.endpoint ~= nil then hs.message = hs.message .. " at " .. st.endpoint end
  return hs
end

hs.message = "Progressing" .. replicas
local why = nil
if ready ~= nil and ready.status ~= "True" then why = explain(ready.reason, ready.message) end
if why ~= nil then hs.message = hs.message .. ": " .. why end
return hs
