-- Shared by the wrk scripts: counts answers by status in every thread and prints them with
-- p50/p95/p99 when the run ends. Loaded with dofile() from the scripts' own folder.
counts = {}
threads = {}
function setup(thread)
  table.insert(threads, thread)
  if on_setup then on_setup(thread, #threads) end
end
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, n in pairs(c) do total[k] = (total[k] or 0) + n end
  end
  for k, n in pairs(total) do io.write(string.format("status %d: %d\n", k, n)) end
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("p%d: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
