// A module whose header differs by configuration.
`ifdef SMALL
module cfg_core (input clk, input [7:0] d, output [7:0] q);
`else
module cfg_core (input clk, input [15:0] d, output [15:0] q);
`endif
  assign q = d;
endmodule

`ifdef HAS_DEBUG
// only built with HAS_DEBUG
module dbg_unit (input clk, output reg tick);
  always @(posedge clk) tick <= ~tick;
endmodule
`endif
