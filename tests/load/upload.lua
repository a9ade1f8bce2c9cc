-- POST a 1 MB multipart text file (unique per request) as a new item; counts answers by status.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")
local n = 0
local filler = string.rep("lorem ipsum dolor sit amet ", 38836) -- about 1 MB
function on_setup(thread, index)
  thread:set("base", index * 100000000 + os.time() % 1000000)
end
function init(args) counts = {}; n = base end
request = function()
  n = n + 1
  local b = "omnibindloadboundary"
  local body = "--" .. b .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\r\n"
    .. "note " .. n .. " " .. filler .. "\r\n--" .. b .. "--\r\n"
  return wrk.format("POST", nil, {["Content-Type"] = "multipart/form-data; boundary=" .. b}, body)
end
