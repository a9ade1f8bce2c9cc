-- POST a random 128-d vector query to the search route; counts answers by status.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")
math.randomseed(os.time())
function init(args) counts = {} end
request = function()
  local v = {}
  for i = 1, 128 do v[i] = string.format("%.4f", math.random() * 2 - 1) end
  local body = '{"query":{"vector":[' .. table.concat(v, ",") .. ']},"k":10}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
