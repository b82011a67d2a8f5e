// first: an ifdef around a leading-comma port
module first (
  input a
`ifdef WITH_B
  , input b
`endif
  , output y
);
  assign y = a;
endmodule

// second: follows the broken one
module second #(parameter W = 4) (input [W-1:0] d, output [W-1:0] q);
  assign q = d;
endmodule

`define REG_BITS 7:0
module third (input [`REG_BITS] d, output [`REG_BITS] q);
  assign q = ~d;
endmodule
